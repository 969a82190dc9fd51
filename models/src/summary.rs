//! A Keras-style `model.summary()`: layer, output shape and parameters per row in
//! the paper's row order, with totals counted as Keras does (BatchNorm moving
//! statistics are non-trainable parameters).

use std::fmt;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::{EmotionNet, INPUT_SIZE, ModelConfig, is_trainable};

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    /// Keras layer name (`conv2d_4`).
    pub name: String,
    /// Keras layer type (`Conv2D`).
    pub kind: &'static str,
    /// Output shape without the batch axis, channels-last as Keras prints it.
    pub shape: Vec<usize>,
    /// Parameters owned by the layer.
    pub params: usize,
}

/// A network's layer table and parameter totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows in the paper's order, starting with the input.
    pub rows: Vec<LayerRow>,
    /// All parameters.
    pub total: usize,
    /// Parameters the optimiser updates.
    pub trainable: usize,
    /// BatchNorm moving statistics.
    pub non_trainable: usize,
}

fn kind_of(name: &str) -> &'static str {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
    match base {
        "conv2d" => "Conv2D",
        "separable_conv2d" => "SeparableConv2D",
        "batch_normalization" => "BatchNormalization",
        "activation" | "predictions" => "Activation",
        "max_pooling2d" => "MaxPooling2D",
        "add" => "Add",
        "global_average_pooling2d" => "GlobalAveragePooling2D",
        "flatten" => "Flatten",
        "dense" | "prediction" => "Dense",
        _ => "Layer",
    }
}

/// Keras' view of an NCHW shape without the batch axis.
fn channels_last(dims: &[usize]) -> Vec<usize> {
    match dims {
        [_, c, h, w] => vec![*h, *w, *c],
        [_, rest @ ..] => rest.to_vec(),
        [] => vec![],
    }
}

impl Summary {
    /// Builds the network `cfg` describes with fresh parameters and traces one
    /// forward pass to list every layer.
    pub fn of(cfg: &ModelConfig) -> Result<Self> {
        let varmap = VarMap::new();
        let dev = Device::Cpu;
        let net = EmotionNet::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?
            .clone();
        let params_of = |layer: &str| -> usize {
            let prefix = format!("{layer}.");
            vars.iter()
                .filter(|(n, _)| n.starts_with(&prefix))
                .map(|(_, v)| v.elem_count())
                .sum()
        };
        let x = Tensor::zeros(
            (1, cfg.in_channels(), INPUT_SIZE, INPUT_SIZE),
            DType::F32,
            &dev,
        )?;
        let mut rows = vec![LayerRow {
            name: "input_1".into(),
            kind: "InputLayer",
            shape: vec![INPUT_SIZE, INPUT_SIZE, cfg.in_channels()],
            params: 0,
        }];
        let mut record = |name: &str, t: &Tensor| {
            rows.push(LayerRow {
                name: name.to_owned(),
                kind: kind_of(name),
                shape: channels_last(t.dims()),
                params: params_of(name),
            });
        };
        net.forward_traced(&x, false, &mut Some(&mut record))?;
        let total = vars.values().map(|v| v.elem_count()).sum();
        let trainable = vars
            .iter()
            .filter(|(n, _)| is_trainable(n))
            .map(|(_, v)| v.elem_count())
            .sum();
        Ok(Self {
            rows,
            total,
            trainable,
            non_trainable: total - trainable,
        })
    }
}

impl fmt::Display for Summary {
    /// The table, then the totals line `total: N trainable: N non-trainable: N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = |s: &[usize]| {
            let inner: Vec<String> = s.iter().map(ToString::to_string).collect();
            format!("(None, {})", inner.join(", "))
        };
        writeln!(
            f,
            "{:<52}{:<22}{:>10}",
            "Layer (type)", "Output shape", "Param #"
        )?;
        writeln!(f, "{}", "=".repeat(84))?;
        for r in &self.rows {
            let label = format!("{} ({})", r.name, r.kind);
            writeln!(f, "{label:<52}{:<22}{:>10}", shape(&r.shape), r.params)?;
        }
        writeln!(f, "{}", "=".repeat(84))?;
        write!(
            f,
            "total: {} trainable: {} non-trainable: {}",
            self.total, self.trainable, self.non_trainable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    #[test]
    fn totals_match_the_paper() {
        let expected = [
            (Arch::Arch1, 293_951, 292_863, 1_088),
            (Arch::Arch2, 1_142_463, 1_141_375, 1_088),
            (Arch::Arch3, 306_831, 305_807, 1_024),
            (Arch::Arch4, 1_155_343, 1_154_319, 1_024),
        ];
        for (arch, total, trainable, non) in expected {
            let s = Summary::of(&ModelConfig::preset(arch)).unwrap();
            assert_eq!(
                (s.total, s.trainable, s.non_trainable),
                (total, trainable, non),
                "{arch}"
            );
            // Every parameter belongs to exactly one listed row.
            assert_eq!(
                s.rows.iter().map(|r| r.params).sum::<usize>(),
                total,
                "{arch}"
            );
        }
    }

    #[test]
    fn arch1_rows_follow_table_1() {
        let s = Summary::of(&ModelConfig::preset(Arch::Arch1)).unwrap();
        let names: Vec<&str> = s.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 43);
        assert_eq!(
            &names[14..25],
            &[
                "separable_conv2d",
                "batch_normalization_6",
                "activation_4",
                "separable_conv2d_1",
                "conv2d_4",
                "batch_normalization_7",
                "batch_normalization_4",
                "max_pooling2d_1",
                "conv2d_5",
                "activation_5",
                "batch_normalization_5",
            ]
        );
        let row = |n: &str| s.rows.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(row("separable_conv2d").params, 656);
        assert_eq!(row("conv2d_9").params, 147_584);
        assert_eq!(row("conv2d_4").shape, vec![24, 24, 16]);
        assert_eq!(row("conv2d_10").shape, vec![6, 6, 7]);
        assert_eq!(row("predictions").shape, vec![7]);
    }

    #[test]
    fn arch4_pools_and_head_follow_table_4() {
        let s = Summary::of(&ModelConfig::preset(Arch::Arch4)).unwrap();
        let row = |n: &str| s.rows.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(row("max_pooling2d").shape, vec![24, 24, 16]);
        assert_eq!(row("max_pooling2d_2").shape, vec![6, 6, 64]);
        assert_eq!(row("max_pooling2d_3").shape, vec![3, 3, 128]);
        assert_eq!(row("flatten").shape, vec![1152]);
        assert_eq!(row("dense").params, 590_336);
        assert_eq!(row("prediction").params, 3_591);
        assert_eq!(s.rows.last().unwrap().name, "prediction");
    }
}
