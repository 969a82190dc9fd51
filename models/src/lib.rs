//! Candle implementations of the four facial-expression networks of Chowanda 2021,
//! "Separable convolutional neural networks for facial expressions recognition"
//! (J Big Data 8:132), exactly as its Tables 1–4, plus the weights format they
//! are shipped in.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{ModuleT, VarBuilder, VarMap};
//! use models::{EmotionNet, ModelConfig, Arch};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let net = EmotionNet::new(&ModelConfig::preset(Arch::Arch1), vb)?;
//! let faces = Tensor::zeros((2, 1, 48, 48), DType::F32, &Device::Cpu)?;
//! let logits = net.forward_t(&faces, false)?;
//! assert_eq!(logits.dims(), &[2, 7]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Inputs are NCHW `f32` tensors of 48x48 gray faces normalised as the weights'
//! metadata says ([`Normalization`]); outputs are logits over [`FER2013_CLASSES`].

#![deny(unsafe_code)]

pub mod blocks;
#[expect(
    unsafe_code,
    reason = "the two lanes share scratch buffers through raw pointers"
)]
pub mod infer;
pub mod layers;
pub mod mtcnn;
pub mod mtcnn_engine;
pub mod nets;
pub mod summary;
pub mod weights;
pub mod yunet;

use std::fmt;
use std::str::FromStr;

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use serde::{Deserialize, Serialize};

pub use blocks::Tap;
pub use layers::{BnConfig, is_trainable};
pub use nets::{
    Arch1, Arch1Config, Arch2, Arch2Config, Arch3, Arch3Config, Arch4, Arch4Config, DenseNetConfig,
    GapNetConfig,
};
pub use summary::{LayerRow, Summary};
pub use weights::{InputSpec, LoadedWeights, Normalization, Provenance, WeightsError, WeightsMeta};

/// Side length of the square input face.
pub const INPUT_SIZE: usize = 48;

/// FER2013's seven expressions in label order (0..=6), the networks' output order.
pub const FER2013_CLASSES: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];

/// One of the paper's four architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Separable + residual body, global-average-pooling head (Table 1).
    Arch1,
    /// Separable + residual body, dense head (Table 2).
    Arch2,
    /// Plain convolutions, global-average-pooling head (Table 3).
    Arch3,
    /// Plain convolutions, dense head (Table 4).
    Arch4,
}

impl Arch {
    /// All four, in the paper's order.
    pub const ALL: [Arch; 4] = [Arch::Arch1, Arch::Arch2, Arch::Arch3, Arch::Arch4];

    /// The lowercase name used on the command line and in weight files.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Arch1 => "arch1",
            Arch::Arch2 => "arch2",
            Arch::Arch3 => "arch3",
            Arch::Arch4 => "arch4",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| {
                a.name().eq_ignore_ascii_case(s)
                    || s.eq_ignore_ascii_case(&a.name().replace("arch", "arch-"))
            })
            .ok_or_else(|| {
                format!("unknown architecture `{s}` (expected arch1, arch2, arch3 or arch4)")
            })
    }
}

/// A network's configuration, tagged with its architecture (`{"arch": "arch1", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelConfig {
    /// ARCH-1.
    Arch1(Arch1Config),
    /// ARCH-2.
    Arch2(Arch2Config),
    /// ARCH-3.
    Arch3(Arch3Config),
    /// ARCH-4.
    Arch4(Arch4Config),
}

impl ModelConfig {
    /// The paper's configuration of `arch` (7 classes, gray input, Keras BatchNorm,
    /// dropout 0.5 in the dense heads).
    pub fn preset(arch: Arch) -> Self {
        match arch {
            Arch::Arch1 => Self::Arch1(GapNetConfig::default()),
            Arch::Arch2 => Self::Arch2(DenseNetConfig::default()),
            Arch::Arch3 => Self::Arch3(GapNetConfig::default()),
            Arch::Arch4 => Self::Arch4(DenseNetConfig::default()),
        }
    }

    /// Which architecture this configures.
    pub fn arch(&self) -> Arch {
        match self {
            Self::Arch1(_) => Arch::Arch1,
            Self::Arch2(_) => Arch::Arch2,
            Self::Arch3(_) => Arch::Arch3,
            Self::Arch4(_) => Arch::Arch4,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            Self::Arch1(c) | Self::Arch3(c) => c.in_channels,
            Self::Arch2(c) | Self::Arch4(c) => c.in_channels,
        }
    }

    /// Output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::Arch1(c) | Self::Arch3(c) => c.num_classes,
            Self::Arch2(c) | Self::Arch4(c) => c.num_classes,
        }
    }

    /// Checks every size and rate before a network of this configuration is
    /// allocated (a weights file's metadata is untrusted input): 1 to 4
    /// input channels, 1 to 1,000 classes, 1 to 16,384 dense units, dropout
    /// in `[0, 1)`, BatchNorm epsilon positive and momentum in `[0, 1)`.
    pub fn check_ranges(&self) -> std::result::Result<(), String> {
        let (channels, classes, bn) = match self {
            Self::Arch1(c) | Self::Arch3(c) => (c.in_channels, c.num_classes, &c.bn),
            Self::Arch2(c) | Self::Arch4(c) => (c.in_channels, c.num_classes, &c.bn),
        };
        if !(1..=4).contains(&channels) {
            return Err(format!("in_channels {channels} is not between 1 and 4"));
        }
        if !(1..=1000).contains(&classes) {
            return Err(format!("num_classes {classes} is not between 1 and 1000"));
        }
        if !(bn.eps.is_finite() && bn.eps > 0.0 && (0.0..1.0).contains(&bn.momentum)) {
            return Err(format!(
                "BatchNorm eps {} / momentum {} out of range",
                bn.eps, bn.momentum
            ));
        }
        if let Self::Arch2(c) | Self::Arch4(c) = self {
            if !(1..=16_384).contains(&c.dense_units) {
                return Err(format!(
                    "dense_units {} is not between 1 and 16384",
                    c.dense_units
                ));
            }
            if !(0.0..1.0).contains(&c.dropout) {
                return Err(format!("dropout {} is not in [0, 1)", c.dropout));
            }
        }
        Ok(())
    }

    /// Sets the number of output classes (FER+'s eight, a custom label set).
    pub fn set_num_classes(&mut self, n: usize) {
        match self {
            Self::Arch1(c) | Self::Arch3(c) => c.num_classes = n,
            Self::Arch2(c) | Self::Arch4(c) => c.num_classes = n,
        }
    }

    /// Sets the dropout of the dense heads (no effect on ARCH-1/ARCH-3).
    pub fn set_dropout(&mut self, p: f32) {
        if let Self::Arch2(c) | Self::Arch4(c) = self {
            c.dropout = p;
        }
    }

    /// The BatchNorm settings of every BatchNorm layer.
    pub fn bn_mut(&mut self) -> &mut BnConfig {
        match self {
            Self::Arch1(c) | Self::Arch3(c) => &mut c.bn,
            Self::Arch2(c) | Self::Arch4(c) => &mut c.bn,
        }
    }
}

/// Any of the four networks behind one type.
#[derive(Debug, Clone)]
pub enum EmotionNet {
    /// ARCH-1.
    Arch1(Arch1),
    /// ARCH-2.
    Arch2(Arch2),
    /// ARCH-3.
    Arch3(Arch3),
    /// ARCH-4.
    Arch4(Arch4),
}

impl EmotionNet {
    /// Creates the network `cfg` describes, its parameters under `vb`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            ModelConfig::Arch1(c) => Self::Arch1(Arch1::new(c, vb)?),
            ModelConfig::Arch2(c) => Self::Arch2(Arch2::new(c, vb)?),
            ModelConfig::Arch3(c) => Self::Arch3(Arch3::new(c, vb)?),
            ModelConfig::Arch4(c) => Self::Arch4(Arch4::new(c, vb)?),
        })
    }

    /// Which architecture this is.
    pub fn arch(&self) -> Arch {
        match self {
            Self::Arch1(_) => Arch::Arch1,
            Self::Arch2(_) => Arch::Arch2,
            Self::Arch3(_) => Arch::Arch3,
            Self::Arch4(_) => Arch::Arch4,
        }
    }

    /// `(N, C, 48, 48) -> (N, classes)` logits, with every named layer output
    /// (Keras names from the paper's tables) passed to `tap`.
    pub fn forward_traced(&self, x: &Tensor, train: bool, tap: &mut Tap) -> Result<Tensor> {
        match self {
            Self::Arch1(n) => n.forward_traced(x, train, tap),
            Self::Arch2(n) => n.forward_traced(x, train, tap),
            Self::Arch3(n) => n.forward_traced(x, train, tap),
            Self::Arch4(n) => n.forward_traced(x, train, tap),
        }
    }
}

impl ModuleT for EmotionNet {
    /// `(N, C, 48, 48) -> (N, classes)` logits.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_traced(x, train, &mut None)
    }
}
