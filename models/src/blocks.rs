//! The two bodies (separable + residual, plain) and two heads (global average
//! pooling, dense) that the four networks are assembled from, with the Keras layer
//! names of the paper's tables so every intermediate output can be traced by name.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{
    BatchNorm, BnConfig, Conv2d, Dense, SeparableConv2d, flatten_channels_last, global_avg_pool,
    max_pool2,
};
use kernels::BnThen;

/// Receives each named intermediate output of a traced forward pass, in the
/// order of the paper's tables.
pub type Tap<'a> = Option<&'a mut dyn FnMut(&str, &Tensor)>;

fn emit(tap: &mut Tap, name: &str, x: &Tensor) {
    if let Some(f) = tap.as_mut() {
        f(name, x);
    }
}

fn relu(tap: &mut Tap, name: &str, x: &Tensor) -> Result<Tensor> {
    let y = x.relu()?;
    emit(tap, name, &y);
    Ok(y)
}

fn pool(tap: &mut Tap, name: &str, x: &Tensor) -> Result<Tensor> {
    let y = max_pool2(x)?;
    emit(tap, name, &y);
    Ok(y)
}

/// Max-pooling then ReLU, fused unless traced.
fn pool_relu(tap: &mut Tap, pool_name: &str, act: &str, x: &Tensor) -> Result<Tensor> {
    if tap.is_some() {
        let y = pool(tap, pool_name, x)?;
        return relu(tap, act, &y);
    }
    kernels::max_pool2_relu(x)
}

/// A convolution followed by BatchNorm, tapped under both layer names.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    conv_name: String,
    bn_name: String,
}

impl ConvBn {
    fn new(
        vb: &VarBuilder,
        (conv_name, bn_name): (&str, &str),
        (c_in, c_out, kernel, stride, bias): (usize, usize, usize, usize, bool),
        bn: BnConfig,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(vb.pp(conv_name), c_in, c_out, kernel, stride, bias)?,
            bn: BatchNorm::new(vb.pp(bn_name), c_out, bn)?,
            conv_name: conv_name.to_owned(),
            bn_name: bn_name.to_owned(),
        })
    }

    fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        if tap.is_none() {
            return self.conv.forward_bn(x, &self.bn, train, BnThen::Nothing);
        }
        let y = self.conv.forward(x)?;
        emit(tap, &self.conv_name, &y);
        let y = self.bn.forward_t(&y, train)?;
        emit(tap, &self.bn_name, &y);
        Ok(y)
    }

    /// Convolution, BatchNorm, max-pooling and ReLU, fused unless traced
    /// (`names`: the pooling's and the activation's).
    fn forward_pool_relu(
        &self,
        x: &Tensor,
        train: bool,
        tap: &mut Tap,
        names: (&str, &str),
    ) -> Result<Tensor> {
        if tap.is_none() {
            return self.conv.forward_bn(x, &self.bn, train, BnThen::PoolRelu);
        }
        let y = self.forward(x, train, tap)?;
        pool_relu(tap, names.0, names.1, &y)
    }

    /// Convolution, BatchNorm and ReLU, fused unless traced.
    fn forward_relu(&self, x: &Tensor, train: bool, tap: &mut Tap, act: &str) -> Result<Tensor> {
        if tap.is_some() {
            let y = self.forward(x, train, tap)?;
            return relu(tap, act, &y);
        }
        self.conv.forward_bn(x, &self.bn, train, BnThen::Relu)
    }
}

/// A separable convolution followed by BatchNorm.
#[derive(Debug, Clone)]
struct SepBn {
    conv: SeparableConv2d,
    bn: BatchNorm,
    conv_name: String,
    bn_name: String,
}

impl SepBn {
    fn new(
        vb: &VarBuilder,
        (conv_name, bn_name): (&str, &str),
        c_in: usize,
        c_out: usize,
        bn: BnConfig,
    ) -> Result<Self> {
        Ok(Self {
            conv: SeparableConv2d::new(vb.pp(conv_name), c_in, c_out)?,
            bn: BatchNorm::new(vb.pp(bn_name), c_out, bn)?,
            conv_name: conv_name.to_owned(),
            bn_name: bn_name.to_owned(),
        })
    }

    fn forward_relu(&self, x: &Tensor, train: bool, tap: &mut Tap, act: &str) -> Result<Tensor> {
        if tap.is_some() {
            let y = self.conv.forward(x)?;
            emit(tap, &self.conv_name, &y);
            let y = self.bn.forward_t(&y, train)?;
            emit(tap, &self.bn_name, &y);
            return relu(tap, act, &y);
        }
        self.conv.forward_bn(x, &self.bn, train, BnThen::Relu)
    }
}

/// The body of ARCH-1 and ARCH-2 (Table 1 up to `activation_10`):
/// `(N, C, 48, 48) -> (N, 128, 6, 6)`.
#[derive(Debug, Clone)]
pub struct SeparableBody {
    stem: [ConvBn; 4],
    sep: SepBn,
    sep_1: SepBn,
    res_a: ConvBn,
    res_b: ConvBn,
    tail: [ConvBn; 4],
}

impl SeparableBody {
    /// Creates every parameter of the body under `vb`.
    pub fn new(vb: &VarBuilder, in_channels: usize, bn: BnConfig) -> Result<Self> {
        let c = |names, shape| ConvBn::new(vb, names, shape, bn);
        Ok(Self {
            stem: [
                c(
                    ("conv2d", "batch_normalization"),
                    (in_channels, 8, 3, 1, false),
                )?,
                c(("conv2d_1", "batch_normalization_1"), (8, 8, 3, 1, false))?,
                c(("conv2d_2", "batch_normalization_2"), (8, 16, 3, 1, false))?,
                c(("conv2d_3", "batch_normalization_3"), (16, 16, 3, 1, false))?,
            ],
            sep: SepBn::new(
                vb,
                ("separable_conv2d", "batch_normalization_6"),
                16,
                32,
                bn,
            )?,
            sep_1: SepBn::new(
                vb,
                ("separable_conv2d_1", "batch_normalization_7"),
                32,
                32,
                bn,
            )?,
            res_a: c(("conv2d_4", "batch_normalization_4"), (16, 16, 1, 1, false))?,
            res_b: c(("conv2d_5", "batch_normalization_5"), (16, 32, 1, 2, false))?,
            tail: [
                c(("conv2d_6", "batch_normalization_8"), (32, 64, 3, 1, true))?,
                c(("conv2d_7", "batch_normalization_9"), (64, 64, 3, 1, true))?,
                c(
                    ("conv2d_8", "batch_normalization_10"),
                    (64, 128, 3, 1, true),
                )?,
                c(
                    ("conv2d_9", "batch_normalization_11"),
                    (128, 128, 3, 1, true),
                )?,
            ],
        })
    }

    /// Runs the body, tapping every layer in Table 1's row order.
    pub fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, layer) in self.stem[..3].iter().enumerate() {
            y = layer.forward_relu(&y, train, tap, &activation_name(i))?;
        }
        let trunk =
            self.stem[3].forward_pool_relu(&y, train, tap, ("max_pooling2d", "activation_3"))?;

        let main = self.sep.forward_relu(&trunk, train, tap, "activation_4")?;
        let y = if tap.is_none() {
            let main =
                self.sep_1
                    .conv
                    .forward_bn(&main, &self.sep_1.bn, train, BnThen::PoolRelu)?;
            let res = self.res_a.forward(&trunk, train, tap)?;
            let res = self.res_b.forward(&res, train, tap)?;
            (main + res)?.relu()?
        } else {
            self.traced_residual(&trunk, main, train, tap)?
        };

        let y = self.tail[0].forward_relu(&y, train, tap, "activation_7")?;
        let y =
            self.tail[1].forward_pool_relu(&y, train, tap, ("max_pooling2d_2", "activation_8"))?;
        let y = self.tail[2].forward_relu(&y, train, tap, "activation_9")?;
        self.tail[3].forward_relu(&y, train, tap, "activation_10")
    }

    /// The second separable convolution and the residual branch, traced:
    /// Table 1 interleaves the two branches; this order reproduces its rows.
    fn traced_residual(
        &self,
        trunk: &Tensor,
        main: Tensor,
        train: bool,
        tap: &mut Tap,
    ) -> Result<Tensor> {
        let main = self.sep_1.conv.forward(&main)?;
        emit(tap, &self.sep_1.conv_name, &main);
        let res = self.res_a.conv.forward(trunk)?;
        emit(tap, &self.res_a.conv_name, &res);
        let main = self.sep_1.bn.forward_t(&main, train)?;
        emit(tap, &self.sep_1.bn_name, &main);
        let res = self.res_a.bn.forward_t(&res, train)?;
        emit(tap, &self.res_a.bn_name, &res);
        let main = pool(tap, "max_pooling2d_1", &main)?;
        let res = self.res_b.conv.forward(&res)?;
        emit(tap, &self.res_b.conv_name, &res);
        let main = relu(tap, "activation_5", &main)?;
        let res = self.res_b.bn.forward_t(&res, train)?;
        emit(tap, &self.res_b.bn_name, &res);
        let y = (main + res)?;
        emit(tap, "add", &y);
        relu(tap, "activation_6", &y)
    }
}

/// The body of ARCH-3 and ARCH-4 (Table 3 up to `activation_10`): eleven 3x3
/// convolutions without bias, `(N, C, 48, 48) -> (N, 128, 6, 6)`.
#[derive(Debug, Clone)]
pub struct PlainBody {
    layers: Vec<ConvBn>,
}

/// Output channels of ARCH-3's eleven convolutions.
const PLAIN_CHANNELS: [usize; 11] = [8, 8, 16, 16, 16, 32, 32, 64, 64, 128, 128];

impl PlainBody {
    /// Creates every parameter of the body under `vb`.
    pub fn new(vb: &VarBuilder, in_channels: usize, bn: BnConfig) -> Result<Self> {
        let mut c_in = in_channels;
        let mut layers = Vec::with_capacity(PLAIN_CHANNELS.len());
        for (i, &c_out) in PLAIN_CHANNELS.iter().enumerate() {
            let names = (indexed("conv2d", i), indexed("batch_normalization", i));
            layers.push(ConvBn::new(
                vb,
                (&names.0, &names.1),
                (c_in, c_out, 3, 1, false),
                bn,
            )?);
            c_in = c_out;
        }
        Ok(Self { layers })
    }

    /// Runs the body, tapping every layer in Table 3's row order.
    pub fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        let mut y = x.clone();
        let mut pools = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            // Max-pooling sits between BN and ReLU of the 5th, 7th and 9th conv.
            if matches!(i, 4 | 6 | 8) {
                let names = (
                    &indexed("max_pooling2d", pools)[..],
                    &activation_name(i)[..],
                );
                y = layer.forward_pool_relu(&y, train, tap, names)?;
                pools += 1;
            } else {
                y = layer.forward_relu(&y, train, tap, &activation_name(i))?;
            }
        }
        Ok(y)
    }
}

/// Keras' automatic layer naming: `name`, `name_1`, `name_2`, ...
pub fn indexed(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_owned()
    } else {
        format!("{name}_{i}")
    }
}

fn activation_name(i: usize) -> String {
    indexed("activation", i)
}

/// The ARCH-1/ARCH-3 head: a 3x3 convolution to the classes, then global average
/// pooling. Returns logits `(N, classes)`; the softmax is tapped as `predictions`.
#[derive(Debug, Clone)]
pub struct GapHead {
    conv: Conv2d,
    name: String,
}

impl GapHead {
    /// Creates the head's convolution as layer `name`.
    pub fn new(vb: &VarBuilder, name: &str, num_classes: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(vb.pp(name), 128, num_classes, 3, 1, true)?,
            name: name.to_owned(),
        })
    }

    /// `(N, 128, 6, 6) -> (N, classes)` logits.
    pub fn forward(&self, x: &Tensor, tap: &mut Tap) -> Result<Tensor> {
        let y = self.conv.forward(x)?;
        emit(tap, &self.name, &y);
        let logits = global_avg_pool(&y)?;
        emit(tap, "global_average_pooling2d", &logits);
        if tap.is_some() {
            let p = candle_nn::ops::softmax(&logits, 1)?;
            emit(tap, "predictions", &p);
        }
        Ok(logits)
    }
}

/// The ARCH-2/ARCH-4 head: max-pool to 3x3, flatten (channels-last, as Keras),
/// dense 512 + ReLU + dropout, dense 512 + ReLU + dropout, dense to the classes.
#[derive(Debug, Clone)]
pub struct DenseHead {
    dense: Dense,
    dense_1: Dense,
    prediction: Dense,
    dropout: f32,
}

impl DenseHead {
    /// Creates `dense`, `dense_1` and `prediction`.
    pub fn new(vb: &VarBuilder, units: usize, dropout: f32, num_classes: usize) -> Result<Self> {
        Ok(Self {
            dense: Dense::new(vb.pp("dense"), 3 * 3 * 128, units)?,
            dense_1: Dense::new(vb.pp("dense_1"), units, units)?,
            prediction: Dense::new(vb.pp("prediction"), units, num_classes)?,
            dropout,
        })
    }

    /// `(N, 128, 6, 6) -> (N, classes)` logits.
    pub fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        let y = pool(tap, "max_pooling2d_3", x)?;
        let y = flatten_channels_last(&y)?;
        emit(tap, "flatten", &y);
        let mut y = y;
        for (name, layer) in [("dense", &self.dense), ("dense_1", &self.dense_1)] {
            y = layer.forward(&y)?.relu()?;
            emit(tap, name, &y);
            if train && self.dropout > 0.0 {
                y = candle_nn::ops::dropout(&y, self.dropout)?;
            }
        }
        let logits = self.prediction.forward(&y)?;
        emit(tap, "prediction", &logits);
        Ok(logits)
    }
}
