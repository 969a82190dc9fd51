//! ARCH-1..4 of Chowanda 2021 (J Big Data 8:132), Tables 1–4, assembled from
//! [`crate::blocks`].
//!
//! | network | body | head | params (Keras count) |
//! | --- | --- | --- | --- |
//! | ARCH-1 | separable + residual | conv 128->7, global average pool | 293,951 |
//! | ARCH-2 | separable + residual | max-pool, dense 512, dense 512, dense 7 | 1,142,463 |
//! | ARCH-3 | eleven plain 3x3 convs | conv 128->7, global average pool | 306,831 |
//! | ARCH-4 | eleven plain 3x3 convs | max-pool, dense 512, dense 512, dense 7 | 1,155,343 |

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::blocks::{DenseHead, GapHead, PlainBody, SeparableBody, Tap};
use crate::layers::BnConfig;

/// Configuration of a network with the global-average-pooling head
/// (ARCH-1, ARCH-3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GapNetConfig {
    /// Input channels: 1 for the paper's gray faces.
    pub in_channels: usize,
    /// Output classes (7 for FER2013's expressions).
    pub num_classes: usize,
    /// BatchNorm settings (Keras: eps 1e-3, momentum 0.99).
    pub bn: BnConfig,
}

impl Default for GapNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            num_classes: 7,
            bn: BnConfig::default(),
        }
    }
}

/// Configuration of a network with the dense head (ARCH-2, ARCH-4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenseNetConfig {
    /// Input channels: 1 for the paper's gray faces.
    pub in_channels: usize,
    /// Output classes (7 for FER2013's expressions).
    pub num_classes: usize,
    /// BatchNorm settings (Keras: eps 1e-3, momentum 0.99).
    pub bn: BnConfig,
    /// Width of the two hidden dense layers (512 in the paper).
    pub dense_units: usize,
    /// Dropout after each hidden dense layer in train mode (0.5 in the paper).
    pub dropout: f32,
}

impl Default for DenseNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            num_classes: 7,
            bn: BnConfig::default(),
            dense_units: 512,
            dropout: 0.5,
        }
    }
}

/// ARCH-1's configuration (Table 1).
pub type Arch1Config = GapNetConfig;
/// ARCH-2's configuration (Table 2).
pub type Arch2Config = DenseNetConfig;
/// ARCH-3's configuration (Table 3).
pub type Arch3Config = GapNetConfig;
/// ARCH-4's configuration (Table 4).
pub type Arch4Config = DenseNetConfig;

/// One stage of a network, traced by layer name.
pub trait Stage {
    /// Runs the stage; `train` selects batch statistics and dropout.
    fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor>;
}

impl Stage for SeparableBody {
    fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        SeparableBody::forward(self, x, train, tap)
    }
}

impl Stage for PlainBody {
    fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        PlainBody::forward(self, x, train, tap)
    }
}

impl Stage for GapHead {
    fn forward(&self, x: &Tensor, _train: bool, tap: &mut Tap) -> Result<Tensor> {
        GapHead::forward(self, x, tap)
    }
}

impl Stage for DenseHead {
    fn forward(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        DenseHead::forward(self, x, train, tap)
    }
}

/// A body followed by a head. The four networks are the four combinations.
#[derive(Debug, Clone)]
pub struct Net<B, H> {
    body: B,
    head: H,
}

impl<B: Stage, H: Stage> Net<B, H> {
    /// `(N, C, 48, 48) -> (N, classes)` logits; `tap` receives every named layer
    /// output in the paper's row order.
    pub fn forward_traced(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        let y = self.body.forward(x, train, tap)?;
        self.head.forward(&y, train, tap)
    }
}

impl<B: Stage, H: Stage> ModuleT for Net<B, H> {
    /// `(N, C, 48, 48) -> (N, classes)` logits. `train` selects batch statistics
    /// (and updates the moving ones) and enables dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_traced(x, train, &mut None)
    }
}

/// ARCH-1 (Table 1): separable convolutions with a residual branch and a
/// global-average-pooling head; the network the plugin ships.
pub type Arch1 = Net<SeparableBody, GapHead>;
/// ARCH-2 (Table 2): ARCH-1's body with the dense head.
pub type Arch2 = Net<SeparableBody, DenseHead>;
/// ARCH-3 (Table 3): the plain-convolution baseline with the
/// global-average-pooling head.
pub type Arch3 = Net<PlainBody, GapHead>;
/// ARCH-4 (Table 4): the plain-convolution baseline with the dense head.
pub type Arch4 = Net<PlainBody, DenseHead>;

impl Arch1 {
    /// Creates ARCH-1's parameters under `vb` (a `VarMap` for training, loaded
    /// tensors for inference).
    pub fn new(cfg: &Arch1Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            body: SeparableBody::new(&vb, cfg.in_channels, cfg.bn)?,
            head: GapHead::new(&vb, "conv2d_10", cfg.num_classes)?,
        })
    }
}

impl Arch2 {
    /// Creates ARCH-2's parameters under `vb`.
    pub fn new(cfg: &Arch2Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            body: SeparableBody::new(&vb, cfg.in_channels, cfg.bn)?,
            head: DenseHead::new(&vb, cfg.dense_units, cfg.dropout, cfg.num_classes)?,
        })
    }
}

impl Arch3 {
    /// Creates ARCH-3's parameters under `vb`.
    pub fn new(cfg: &Arch3Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            body: PlainBody::new(&vb, cfg.in_channels, cfg.bn)?,
            head: GapHead::new(&vb, "conv2d_11", cfg.num_classes)?,
        })
    }
}

impl Arch4 {
    /// Creates ARCH-4's parameters under `vb`.
    pub fn new(cfg: &Arch4Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            body: PlainBody::new(&vb, cfg.in_channels, cfg.bn)?,
            head: DenseHead::new(&vb, cfg.dense_units, cfg.dropout, cfg.num_classes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{ModuleT, VarBuilder, VarMap};

    use crate::{Arch, EmotionNet, ModelConfig};

    /// The traced path runs every layer separately; the plain path fuses
    /// BatchNorm + ReLU and max-pool + ReLU. Both must compute the same thing.
    #[test]
    fn fused_and_traced_paths_agree() {
        let dev = Device::Cpu;
        for arch in Arch::ALL {
            let mut cfg = ModelConfig::preset(arch);
            cfg.set_dropout(0.0);
            let varmap = VarMap::new();
            let net =
                EmotionNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
            let x = Tensor::rand(0f32, 1f32, (3, 1, 48, 48), &dev).unwrap();
            for train in [false, true] {
                let fused = net.forward_t(&x, train).unwrap();
                let mut names = Vec::new();
                let mut tap = |n: &str, _: &Tensor| names.push(n.to_owned());
                let traced = net.forward_traced(&x, train, &mut Some(&mut tap)).unwrap();
                let d: f32 = (fused - traced)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(
                    d < 1e-5,
                    "{arch} train={train}: fused and traced differ by {d}"
                );
                assert!(
                    names.iter().any(|n| n == "conv2d_4"),
                    "{arch}: no conv2d_4 tap"
                );
            }
        }
    }
}
