//! Adam (or SGD with Nesterov momentum, `sgd_momentum`) with the two kinds of
//! weight penalty the recipes need, and a state that can be saved and
//! restored exactly (for `--resume`).
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
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var, backprop::GradStore};
use candle_nn::VarMap;
use rayon::prelude::*;
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
    /// SGD with Nesterov momentum (this momentum, 0..1) instead of Adam:
    /// `b = mu * b + g`, `w -= lr * (g + mu * b)` as PyTorch's
    /// `SGD(nesterov=True)`, with the same penalties; `beta1`, `beta2` and
    /// `eps` are then unused. Absent: Adam.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sgd_momentum: Option<f64>,
}

impl AdamConfig {
    /// Checks the hyper-parameters: betas in `[0, 1)`, `eps > 0`, penalties
    /// `>= 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("Adam's {name} must be in [0, 1), got {v}");
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            bail!("Adam's eps must be a positive number, got {}", self.eps);
        }
        for (name, v) in [("l2", self.l2), ("weight_decay", self.weight_decay)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("Adam's {name} must be a number >= 0, got {v}");
            }
        }
        if let Some(mu) = self.sgd_momentum
            && !(0.0..1.0).contains(&mu)
        {
            bail!("SGD's momentum must be in [0, 1), got {mu}");
        }
        Ok(())
    }
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            l2: 0.0,
            weight_decay: 0.0,
            sgd_momentum: None,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    /// The first and second moments, flat in the variable's element order.
    moments: Mutex<Moments>,
    kernel: bool,
}

/// Adam's moments; for SGD, `m` is the momentum buffer and `v` stays zero.
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// One step's constants, the same for every variable but the penalties.
#[derive(Clone, Copy)]
struct StepConsts {
    lr: f32,
    beta1: f32,
    beta2: f32,
    /// Bias corrections `1 - beta^t`.
    bc1: f32,
    bc2: f32,
    eps: f32,
    /// `2 * l2` on kernels, else 0.
    l2x2: f32,
    /// `lr * weight_decay` on kernels, else 0.
    decay: f32,
    /// SGD's Nesterov momentum instead of Adam.
    sgd: Option<f32>,
}

impl StepConsts {
    fn apply(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let k = *self;
        if let Some(mu) = k.sgd {
            for ((w, &g), b) in w.iter_mut().zip(g).zip(m) {
                let g = g + k.l2x2 * *w;
                *b = mu * *b + g;
                *w = *w - k.lr * (g + mu * *b) - k.decay * *w;
            }
            return;
        }
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
            let g = g + k.l2x2 * *w;
            *m = k.beta1 * *m + (1.0 - k.beta1) * g;
            *v = k.beta2 * *v + (1.0 - k.beta2) * g * g;
            let update = (*m / k.bc1) / ((*v / k.bc2).sqrt() + k.eps);
            *w = *w - k.lr * update - k.decay * *w;
        }
    }
}

/// One variable's Adam step, in place on its storage, from its gradient: a
/// single pass instead of a dozen candle ops (and their allocations) per
/// variable.
struct AdamUpdate<'a> {
    moments: &'a Mutex<Moments>,
    k: StepConsts,
}

impl InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("Adam: f32 variables and gradients only");
        };
        let (Some((w0, w1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("Adam: contiguous variables and gradients only");
        };
        let (w, g) = (&mut w[w0..w1], &g[g0..g1]);
        let mut moments = lock(self.moments)?;
        let Moments { m, v } = &mut *moments;
        if g.len() != w.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!(
                "Adam: {} weights, {} gradients, {} moments",
                w.len(),
                g.len(),
                m.len()
            );
        }
        self.k.apply(w, g, m, v);
        Ok(())
    }
}

fn lock(moments: &Mutex<Moments>) -> candle_core::Result<MutexGuard<'_, Moments>> {
    moments
        .lock()
        .map_err(|_| candle_core::Error::Msg("Adam state lock poisoned".into()))
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
        cfg.validate()?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
        let mut names: Vec<&String> = vars.keys().filter(|n| models::is_trainable(n)).collect();
        names.sort();
        for name in &names {
            let var = &vars[*name];
            if var.dtype() != DType::F32 || !var.device().is_cpu() {
                bail!(
                    "Adam updates f32 variables on the CPU; `{name}` is {:?} on {:?}",
                    var.dtype(),
                    var.device().location()
                );
            }
        }
        let slots = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                let n = var.elem_count();
                Slot {
                    name: name.clone(),
                    moments: Mutex::new(Moments {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }),
                    kernel: name.ends_with(".weight"),
                    var,
                }
            })
            .collect();
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

    /// One update with learning rate `lr` from the gradients in `grads`; the
    /// variables are updated in parallel, each in one pass over its storage.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let base = StepConsts {
            lr: lr as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            bc1: (1.0 - c.beta1.powi(t)) as f32,
            bc2: (1.0 - c.beta2.powi(t)) as f32,
            eps: c.eps as f32,
            l2x2: 0.0,
            decay: 0.0,
            sgd: c.sgd_momentum.map(|mu| mu as f32),
        };
        self.slots.par_iter().try_for_each(|s| {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                return Ok(());
            };
            let k = if s.kernel {
                StepConsts {
                    l2x2: (2.0 * c.l2) as f32,
                    decay: (lr * c.weight_decay) as f32,
                    ..base
                }
            } else {
                base
            };
            let update = AdamUpdate {
                moments: &s.moments,
                k,
            };
            s.var
                .as_tensor()
                .inplace_op2(&g.contiguous()?, &update)
                .with_context(|| format!("updating `{}`", s.name))
        })
    }

    /// The moments and step count, for a checkpoint.
    pub fn state(&self) -> Result<(HashMap<String, Tensor>, u64)> {
        let mut map = HashMap::new();
        for s in &self.slots {
            let moments = lock(&s.moments)?;
            for (kind, values) in [("m", &moments.m), ("v", &moments.v)] {
                let t = Tensor::from_slice(values, s.var.shape(), s.var.device())?;
                map.insert(format!("{kind}.{}", s.name), t);
            }
        }
        Ok((map, self.step))
    }

    /// Restores moments and step count saved by [`Adam::state`].
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &self.slots {
            let mut moments = lock(&s.moments)?;
            let Moments { m, v } = &mut *moments;
            for (kind, values) in [("m", m), ("v", v)] {
                let key = format!("{kind}.{}", s.name);
                let t = state
                    .get(&key)
                    .with_context(|| format!("optimizer state has no `{key}`"))?;
                if t.dims() != s.var.dims() {
                    bail!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        s.var.dims()
                    );
                }
                *values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Writes the state to `path` (safetensors, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (map, step) = self.state()?;
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

    /// Adam with both penalties, element by element in f64, as the module's
    /// doc defines it.
    fn reference(
        cfg: AdamConfig,
        w0: &[f64],
        grads: &[Vec<f64>],
        lr: f64,
        kernel: bool,
    ) -> Vec<f64> {
        let (mut w, mut m, mut v) = (w0.to_vec(), vec![0.0; w0.len()], vec![0.0; w0.len()]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..w.len() {
                let g = g[i] + if kernel { 2.0 * cfg.l2 * w[i] } else { 0.0 };
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
                let mh = m[i] / (1.0 - cfg.beta1.powi(t));
                let vh = v[i] / (1.0 - cfg.beta2.powi(t));
                let decay = if kernel {
                    lr * cfg.weight_decay * w[i]
                } else {
                    0.0
                };
                w[i] -= lr * mh / (vh.sqrt() + cfg.eps) + decay;
            }
        }
        w
    }

    #[test]
    fn steps_match_the_reference_with_both_penalties_on_kernels_only() {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w0 = [0.5, -1.25, 2.0, 0.0, -0.75];
        let w0_f32 = Tensor::new(&w0.map(|x| x as f32), &Device::Cpu).unwrap();
        let kernel = vb
            .get_with_hints(5, "lin.weight", Init::Const(0.0))
            .unwrap();
        let bias = vb.get_with_hints(5, "lin.bias", Init::Const(0.0)).unwrap();
        varmap.set_one("lin.weight", &w0_f32).unwrap();
        varmap.set_one("lin.bias", &w0_f32).unwrap();
        let cfg = AdamConfig {
            l2: 0.1,
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
        let mut opt = Adam::new(&varmap, cfg).unwrap();
        let grads: Vec<Vec<f64>> = (0..4)
            .map(|s| {
                (0..5)
                    .map(|i| ((i * 7 + s * 3) % 11) as f64 / 5.0 - 1.0)
                    .collect()
            })
            .collect();
        for g in &grads {
            let c = Tensor::new(
                &g.iter().map(|&x| x as f32).collect::<Vec<_>>()[..],
                &Device::Cpu,
            )
            .unwrap();
            let loss = ((&kernel * &c).unwrap().sum_all().unwrap()
                + (&bias * &c).unwrap().sum_all().unwrap())
            .unwrap();
            opt.step(&loss.backward().unwrap(), 0.05).unwrap();
        }
        for (t, is_kernel) in [(&kernel, true), (&bias, false)] {
            let want = reference(cfg, &w0, &grads, 0.05, is_kernel);
            let got = t.to_vec1::<f32>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5,
                    "kernel {is_kernel}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn sgd_steps_are_nesterov_momentum_with_the_penalties() {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let kernel = vb
            .get_with_hints(3, "lin.weight", Init::Const(0.0))
            .unwrap();
        varmap
            .set_one(
                "lin.weight",
                Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap(),
            )
            .unwrap();
        let cfg = AdamConfig {
            l2: 0.1,
            weight_decay: 0.01,
            sgd_momentum: Some(0.9),
            ..AdamConfig::default()
        };
        let mut opt = Adam::new(&varmap, cfg).unwrap();
        let (mut w, mut b) = ([0.5f64, -1.0, 2.0], [0.0f64; 3]);
        let lr = 0.05;
        for step in 0..3 {
            let g: Vec<f64> = (0..3).map(|i| (i + step) as f64 * 0.3 - 0.4).collect();
            let c = Tensor::new(
                &g.iter().map(|&x| x as f32).collect::<Vec<_>>()[..],
                &Device::Cpu,
            )
            .unwrap();
            let loss = (&kernel * &c).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), lr).unwrap();
            for i in 0..3 {
                let gi = g[i] + 2.0 * 0.1 * w[i];
                b[i] = 0.9 * b[i] + gi;
                w[i] -= lr * (gi + 0.9 * b[i]) + lr * 0.01 * w[i];
            }
        }
        let got = kernel.to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&w) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {w:?}");
        }
        let bad = AdamConfig {
            sgd_momentum: Some(1.0),
            ..AdamConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn bad_hyper_parameters_and_variables_are_errors() {
        let varmap = VarMap::new();
        for cfg in [
            AdamConfig {
                l2: -0.1,
                ..AdamConfig::default()
            },
            AdamConfig {
                weight_decay: f64::NAN,
                ..AdamConfig::default()
            },
            AdamConfig {
                beta2: 1.0,
                ..AdamConfig::default()
            },
            AdamConfig {
                eps: 0.0,
                ..AdamConfig::default()
            },
        ] {
            assert!(Adam::new(&varmap, cfg).is_err(), "{cfg:?}");
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        vb.get_with_hints(3, "lin.weight", Init::Const(1.0))
            .unwrap();
        let err = Adam::new(&varmap, AdamConfig::default()).err().unwrap();
        assert!(err.to_string().contains("f32"), "{err}");
    }

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
        let (a, _) = opt.state().unwrap();
        let (b, _) = other.state().unwrap();
        assert_eq!(
            a["v.lin.weight"].to_vec1::<f32>().unwrap(),
            b["v.lin.weight"].to_vec1::<f32>().unwrap()
        );
    }
}
