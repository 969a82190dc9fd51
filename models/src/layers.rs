//! Building blocks shared by the four networks, with Keras semantics.
//!
//! Tensors are NCHW. Parameter names follow Keras' layer names from the paper's
//! tables (`conv2d_4`, `batch_normalization_7`, ...), with candle's layouts:
//! convolution kernels `(out, in, kh, kw)`, dense kernels `(out, in)`.

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use kernels::BnThen;

/// BatchNorm hyper-parameters, Keras conventions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BnConfig {
    /// Added to the variance before the square root (Keras default 1e-3).
    pub eps: f64,
    /// Keras momentum: `moving = moving * momentum + batch * (1 - momentum)` (0.99).
    pub momentum: f64,
}

impl Default for BnConfig {
    fn default() -> Self {
        Self {
            eps: 1e-3,
            momentum: 0.99,
        }
    }
}

/// Keras' `glorot_uniform` for a kernel with the given fans.
fn glorot(fan_in: usize, fan_out: usize) -> Init {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform {
        lo: -limit,
        up: limit,
    }
}

/// A 2-D convolution with Keras `same` padding (odd kernels) and optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Creates the layer's parameters under `vb` (`weight`, and `bias` when asked).
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        bias: bool,
    ) -> Result<Self> {
        let rf = kernel * kernel;
        let weight = vb.get_with_hints(
            (c_out, c_in, kernel, kernel),
            "weight",
            glorot(c_in * rf, c_out * rf),
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding: kernel / 2,
        })
    }

    /// `(N, C_in, H, W) -> (N, C_out, H', W')`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.as_ref();
        kernels::conv2d_maybe_bias(x, &self.weight, bias, self.stride, self.padding)
    }

    /// `then(bn(self(x)))`; in train mode one fused op on the CPU (see
    /// [`kernels::conv_bn_train`]).
    pub fn forward_bn(
        &self,
        x: &Tensor,
        bn: &BatchNorm,
        train: bool,
        then: BnThen,
    ) -> Result<Tensor> {
        if !train {
            return bn.eval_then(&self.forward(x)?, then);
        }
        let conv = (&self.weight, self.bias.as_ref(), self.stride, self.padding);
        bn.conv_train(x, conv, then)
    }
}

/// Keras `SeparableConv2D` with depth multiplier 1 and no bias: a depthwise 3x3
/// (`depthwise.weight`, `(C, 1, 3, 3)`) followed by a pointwise 1x1
/// (`pointwise.weight`, `(P, C, 1, 1)`).
#[derive(Debug, Clone)]
pub struct SeparableConv2d {
    depthwise: Tensor,
    pointwise: Conv2d,
}

impl SeparableConv2d {
    /// Creates the depthwise and pointwise kernels under `vb`.
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        // Keras computes the depthwise fans from the (3, 3, C, 1) kernel shape.
        let depthwise =
            vb.get_with_hints((c_in, 1, 3, 3), "depthwise.weight", glorot(9 * c_in, 9))?;
        let pointwise = Conv2d::new(vb.pp("pointwise"), c_in, c_out, 1, 1, false)?;
        Ok(Self {
            depthwise,
            pointwise,
        })
    }

    /// `(N, C, H, W) -> (N, P, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = kernels::depthwise3x3(x, &self.depthwise)?;
        self.pointwise.forward(&y)
    }

    /// `then(bn(self(x)))`: the pointwise convolution, BatchNorm and what
    /// follows as in [`Conv2d::forward_bn`].
    pub fn forward_bn(
        &self,
        x: &Tensor,
        bn: &BatchNorm,
        train: bool,
        then: BnThen,
    ) -> Result<Tensor> {
        let y = kernels::depthwise3x3(x, &self.depthwise)?;
        self.pointwise.forward_bn(&y, bn, train, then)
    }
}

/// Keras `BatchNormalization` over the channel axis of an NCHW tensor.
///
/// In train mode it normalises with the batch statistics and updates the moving
/// statistics in place (biased batch variance, as Keras 3 does); in eval mode it
/// uses the moving statistics. `gamma` and `beta` are trainable, `moving_mean` and
/// `moving_variance` are not (see [`is_trainable`]).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Var,
    moving_var: Var,
    cfg: BnConfig,
}

impl BatchNorm {
    /// Creates `gamma`, `beta`, `moving_mean` and `moving_variance` under `vb`.
    pub fn new(vb: VarBuilder, channels: usize, cfg: BnConfig) -> Result<Self> {
        let gamma = vb.get_with_hints(channels, "gamma", Init::Const(1.0))?;
        let beta = vb.get_with_hints(channels, "beta", Init::Const(0.0))?;
        // `Var::from_tensor` shares storage with a variable from a `VarMap`, so the
        // in-place update below is seen by whoever saves the map.
        let moving_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "moving_mean", Init::Const(0.0))?)?;
        let moving_var =
            Var::from_tensor(&vb.get_with_hints(channels, "moving_variance", Init::Const(1.0))?)?;
        Ok(Self {
            gamma,
            beta,
            moving_mean,
            moving_var,
            cfg,
        })
    }

    /// `(N, C, H, W) -> (N, C, H, W)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, train, false)
    }

    /// BatchNorm followed by ReLU when `relu` is set, in one pass on the CPU.
    pub fn forward_fused(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let c = self.gamma.dim(0)?;
        if train {
            let (y, stats) =
                kernels::batch_norm_train(x, &self.gamma, &self.beta, self.cfg.eps, relu)?;
            self.update_moving(stats)?;
            return Ok(y);
        }
        let (scale, shift) = self.folded()?;
        let shape = (1, c, 1, 1);
        let y = x
            .broadcast_mul(&scale.reshape(shape)?)?
            .broadcast_add(&shift.reshape(shape)?)?;
        if relu { y.relu() } else { Ok(y) }
    }

    /// Folds a train-mode batch's statistics into the moving averages.
    fn update_moving(&self, stats: kernels::BatchStats) -> Result<()> {
        let (m, c, dev) = (self.cfg.momentum, self.gamma.dim(0)?, self.gamma.device());
        let mean = Tensor::from_vec(stats.mean, c, dev)?;
        let var = Tensor::from_vec(stats.var, c, dev)?;
        let new_mean = ((self.moving_mean.as_tensor() * m)? + (mean * (1.0 - m))?)?;
        let new_var = ((self.moving_var.as_tensor() * m)? + (var * (1.0 - m))?)?;
        self.moving_mean.set(&new_mean)?;
        self.moving_var.set(&new_var)?;
        Ok(())
    }

    /// Train mode: `then(self(conv(x)))` for the convolution `(weight,
    /// bias, stride, padding)`, as one op ([`kernels::conv_bn_train`]).
    fn conv_train(
        &self,
        x: &Tensor,
        (w, bias, stride, pad): (&Tensor, Option<&Tensor>, usize, usize),
        then: BnThen,
    ) -> Result<Tensor> {
        let (gamma, beta, eps) = (&self.gamma, &self.beta, self.cfg.eps);
        let (y, stats) = kernels::conv_bn_train(x, w, bias, gamma, beta, (stride, pad), eps, then)?;
        self.update_moving(stats)?;
        Ok(y)
    }

    /// Eval mode: `then(self(x))`.
    fn eval_then(&self, x: &Tensor, then: BnThen) -> Result<Tensor> {
        let y = self.forward_fused(x, false, then == BnThen::Relu)?;
        match then {
            BnThen::PoolRelu => kernels::max_pool2_relu(&y),
            _ => Ok(y),
        }
    }

    /// The eval-mode transform as `y = x * scale + shift` per channel.
    pub fn folded(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.moving_var.as_tensor() + self.cfg.eps)?
            .sqrt()?
            .recip()?;
        let scale = (inv_std * &self.gamma)?;
        let shift = (&self.beta - (self.moving_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }
}

/// A fully connected layer (`weight` `(out, in)`, `bias` `(out,)`).
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// Creates the layer's parameters under `vb`.
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        let weight = vb.get_with_hints((c_out, c_in), "weight", glorot(c_in, c_out))?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// `(N, in) -> (N, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Whether a parameter name is trained by the optimiser (false for the
/// BatchNorm moving statistics, which Keras counts as non-trainable).
pub fn is_trainable(name: &str) -> bool {
    !(name.ends_with(".moving_mean") || name.ends_with(".moving_variance"))
}

/// 2x2 max-pooling with stride 2.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    kernels::max_pool2(x)
}

/// Global average pooling: `(N, C, H, W) -> (N, C)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// Flattens in Keras' channels-last order, so dense kernels match Keras' layout:
/// `(N, C, H, W) -> (N, H * W * C)`.
pub fn flatten_channels_last(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 3, 1))?.flatten_from(1)
}

/// The element type every network uses.
pub const DTYPE: DType = DType::F32;
