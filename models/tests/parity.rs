//! Parity with an independent reference: Keras 3 (JAX backend) builds the same
//! four networks layer by layer (`tools/parity_reference.py`), fills them with
//! the formula-generated weights below, and records eval-mode and train-mode
//! logits, the moving statistics after one train step and the gradients of one
//! backward pass (`tests/golden/*.json`). Regenerate with:
//! `KERAS_BACKEND=jax tools/.venv/bin/python tools/parity_reference.py models/tests/golden`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use models::{Arch, EmotionNet, ModelConfig, is_trainable};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn name_seed(name: &str) -> u64 {
    name.bytes()
        .enumerate()
        .map(|(j, c)| (j as u64 + 1) * u64::from(c))
        .sum::<u64>()
        % 1_000_003
}

/// `v_i` in `[-0.5, 0.5)`, exact in `f32`; the same formula as the Python side
/// (the low 16 bits of murmur3's 32-bit finaliser of `i + seed * golden ratio`).
fn fixture_values(name: &str, n: usize) -> Vec<f32> {
    let seed = name_seed(name) as u32;
    (0..n as u32)
        .map(|i| {
            let mut h = i.wrapping_add(seed.wrapping_mul(0x9E37_79B9));
            h ^= h >> 16;
            h = h.wrapping_mul(0x85EB_CA6B);
            h ^= h >> 13;
            h = h.wrapping_mul(0xC2B2_AE35);
            h ^= h >> 16;
            (h & 0xFFFF) as f32 / 65_536.0 - 0.5
        })
        .collect()
}

fn fixture_tensor(name: &str, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v = fixture_values(name, n);
    let param = name.rsplit('.').next().unwrap();
    let out: Vec<f32> = match param {
        "weight" => {
            let fan_in: usize = shape[1..].iter().product();
            let s = (24.0f64 / fan_in as f64).sqrt() as f32;
            v.iter().map(|x| x * s).collect()
        }
        "bias" | "beta" | "moving_mean" => v.iter().map(|x| 0.2f32 * x).collect(),
        "gamma" => v.iter().map(|x| 1.0f32 + 0.4f32 * x).collect(),
        "moving_variance" => v.iter().map(|x| 1.0f32 + x).collect(),
        other => panic!("unexpected parameter {other}"),
    };
    Tensor::from_vec(out, shape, &Device::Cpu).unwrap()
}

fn golden(arch: Arch) -> Value {
    let path = format!("{}/tests/golden/{arch}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A network with fixture weights (dropout off so train mode is deterministic).
fn fixture_net(arch: Arch) -> (EmotionNet, VarMap) {
    let mut cfg = ModelConfig::preset(arch);
    cfg.set_dropout(0.0);
    let varmap = VarMap::new();
    let net = EmotionNet::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&fixture_tensor(name, var.dims())).unwrap();
    }
    (net, varmap)
}

fn input(batch: usize) -> Tensor {
    let v: Vec<f32> = fixture_values("input", batch * 48 * 48)
        .iter()
        .map(|x| x + 0.5)
        .collect();
    Tensor::from_vec(v, (batch, 1, 48, 48), &Device::Cpu).unwrap()
}

fn as_matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}[{i}]: length");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() <= TOL,
                "{what}[{i}][{j}]: candle {a} vs keras {b}"
            );
        }
    }
}

fn check_forward_eval(arch: Arch) {
    let g = golden(arch);
    let (net, _) = fixture_net(arch);
    let logits = net
        .forward_t(&input(4), false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_close(
        &format!("{arch} eval logits"),
        &logits,
        &as_matrix(&g["eval_logits"]),
    );
}

fn check_train_and_gradients(arch: Arch) {
    let g = golden(arch);
    let keras = &g["keras_params"];
    let (net, varmap) = fixture_net(arch);
    let total: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(
        total as u64,
        keras["total"].as_u64().unwrap(),
        "{arch}: Keras' own parameter count"
    );

    let logits = net.forward_t(&input(4), true).unwrap();
    assert_close(
        &format!("{arch} train logits"),
        &logits.to_vec2::<f32>().unwrap(),
        &as_matrix(&g["train_logits"]),
    );
    let labels = Tensor::new(&[0u32, 3, 5, 6], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let loss_v = f64::from(loss.to_scalar::<f32>().unwrap());
    assert!(
        (loss_v - g["train_loss"].as_f64().unwrap()).abs() <= TOL,
        "{arch} loss {loss_v}"
    );
    let grads = loss.backward().unwrap();

    let vars = varmap.data().lock().unwrap();
    let mut checked = 0;
    for (name, want) in g["gradients"].as_object().unwrap() {
        let var = &vars[name];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got.len() as u64, want["numel"].as_u64().unwrap(), "{name}");
        let scale = want["max_abs"].as_f64().unwrap().max(1.0);
        for s in want["samples"].as_array().unwrap() {
            let (i, w) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
            assert!(
                (f64::from(got[i]) - w).abs() <= TOL * scale,
                "{arch} grad {name}[{i}]: candle {} vs keras {w}",
                got[i]
            );
        }
        let sum: f64 = got.iter().map(|&x| f64::from(x)).sum();
        let sum_abs = want["sum_abs"].as_f64().unwrap().max(1.0);
        assert!(
            (sum - want["sum"].as_f64().unwrap()).abs() <= TOL * sum_abs,
            "{arch} grad {name}: sum {sum} vs keras {}",
            want["sum"]
        );
        checked += 1;
    }
    let trainable = vars.keys().filter(|n| is_trainable(n)).count();
    assert_eq!(
        checked, trainable,
        "{arch}: every trainable tensor has a golden gradient"
    );

    for (name, want) in g["moving_after_train_step"].as_object().unwrap() {
        let got = vars[name].as_tensor().to_vec1::<f32>().unwrap();
        for (i, (a, b)) in got.iter().zip(want.as_array().unwrap()).enumerate() {
            let b = b.as_f64().unwrap();
            assert!(
                (f64::from(*a) - b).abs() <= TOL,
                "{arch} {name}[{i}] after one train step: {a} vs {b}"
            );
        }
    }
}

macro_rules! parity_tests {
    ($($arch:ident: $eval:ident, $train:ident;)*) => {$(
        #[test]
        fn $eval() {
            check_forward_eval(Arch::$arch);
        }
        #[test]
        fn $train() {
            check_train_and_gradients(Arch::$arch);
        }
    )*};
}

parity_tests! {
    Arch1: arch1_forward_eval, arch1_forward_train_and_gradients;
    Arch2: arch2_forward_eval, arch2_forward_train_and_gradients;
    Arch3: arch3_forward_eval, arch3_forward_train_and_gradients;
    Arch4: arch4_forward_eval, arch4_forward_train_and_gradients;
}
