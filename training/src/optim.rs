//! Adam with the two kinds of weight penalty the recipes need, and a state that
//! can be saved and restored exactly (for `--resume`).
//!
//! - `l2`: Keras' `kernel_regularizer=l2(l2)`, i.e. `l2 * sum(w^2)` added to the
//!   loss for every kernel (`*.weight`), so `2 * l2 * w` is added to its gradient
//!   before the Adam moments (the paper's recipe, 0.2).
//! - `weight_decay`: decoupled decay (AdamW), `w -= lr * weight_decay * w`, on
//!   kernels only.
//!
//! BatchNorm moving statistics are not optimised (see `models::is_trainable`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Tensor, Var, backprop::GradStore};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator (Keras' default 1e-7).
    pub eps: f64,
    /// Coupled L2 penalty on kernels (Keras `kernel_regularizer`).
    pub l2: f64,
    /// Decoupled weight decay on kernels (AdamW).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            l2: 0.0,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
    kernel: bool,
}

/// Adam over the trainable variables of a `VarMap`.
pub struct Adam {
    cfg: AdamConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl Adam {
    /// Optimises every trainable variable of `varmap` (sorted by name).
    pub fn new(varmap: &VarMap, cfg: AdamConfig) -> Result<Self> {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
        let mut names: Vec<&String> = vars.keys().filter(|n| models::is_trainable(n)).collect();
        names.sort();
        let slots = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                let zeros = || Var::zeros(var.shape(), var.dtype(), var.device());
                Ok(Slot {
                    name: name.clone(),
                    m: zeros()?,
                    v: zeros()?,
                    kernel: name.ends_with(".weight"),
                    var,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let w = s.var.as_tensor();
            let g = if s.kernel && c.l2 > 0.0 {
                (g + (w * (2.0 * c.l2))?)?
            } else {
                g.clone()
            };
            let m = ((s.m.as_tensor() * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((s.v.as_tensor() * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let mut next = (w - (update * lr)?)?;
            if s.kernel && c.weight_decay > 0.0 {
                next = (next - (w * (lr * c.weight_decay))?)?;
            }
            s.m.set(&m)?;
            s.v.set(&v)?;
            s.var.set(&next)?;
        }
        Ok(())
    }

    /// The moments and step count, for a checkpoint.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut map = HashMap::new();
        for s in &self.slots {
            map.insert(format!("m.{}", s.name), s.m.as_tensor().clone());
            map.insert(format!("v.{}", s.name), s.v.as_tensor().clone());
        }
        (map, self.step)
    }

    /// Restores moments and step count saved by [`Adam::state`].
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &self.slots {
            for (kind, var) in [("m", &s.m), ("v", &s.v)] {
                let key = format!("{kind}.{}", s.name);
                let t = state
                    .get(&key)
                    .with_context(|| format!("optimizer state has no `{key}`"))?;
                if t.dims() != var.dims() {
                    bail!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                var.set(t)?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Writes the state to `path` (safetensors, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (map, step) = self.state();
        let meta = HashMap::from([("step".to_owned(), step.to_string())]);
        let mut entries: Vec<(String, Tensor)> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = safetensors::serialize(entries, Some(meta))?;
        models::weights::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Reads a state written by [`Adam::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let step: u64 = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .context("optimizer state has no step count")?
            .parse()?;
        let device = self
            .slots
            .first()
            .map(|s| s.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
        self.restore(&tensors, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarBuilder};

    #[test]
    fn first_step_moves_by_lr_and_state_round_trips() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w = vb
            .get_with_hints(3, "lin.weight", Init::Const(1.0))
            .unwrap();
        let mut opt = Adam::new(&varmap, AdamConfig::default()).unwrap();
        let loss = (&w * &Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        // Adam's first step moves each weight by lr * sign(grad).
        let got = w.to_vec1::<f32>().unwrap();
        for (g, want) in got.iter().zip([0.9f32, 1.1, 0.9]) {
            assert!((g - want).abs() < 1e-5, "{got:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let mut other = Adam::new(&varmap, AdamConfig::default()).unwrap();
        other.load(&path).unwrap();
        assert_eq!(other.steps(), 1);
        let (a, _) = opt.state();
        let (b, _) = other.state();
        assert_eq!(
            a["v.lin.weight"].to_vec1::<f32>().unwrap(),
            b["v.lin.weight"].to_vec1::<f32>().unwrap()
        );
    }
}
