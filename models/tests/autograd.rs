//! The vendored candle-core's patched gradient accumulation (`vendor/README.md`):
//! a node's first gradient is stored as it is, later ones are added. These
//! check what that must keep from the crates.io code: sums over fan-in,
//! contiguous stored gradients, and an error (not a stored tensor of the wrong
//! shape or dtype) when an op's backward returns a gradient that does not fit.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn fan_in_gradients_are_summed() {
    let x = Var::from_vec(
        vec![-1.5f32, -0.5, 0.0, 0.5, 1.0, 2.0],
        (2, 3),
        &Device::Cpu,
    )
    .unwrap();
    // y has two consumers and x three: z = y + y^2 + x with y = 3x,
    // so dz/dx = 3 + 18x + 1.
    let y = (x.as_tensor() * 3.0).unwrap();
    let z = ((&y + y.sqr().unwrap()).unwrap() + x.as_tensor()).unwrap();
    let grads = z.sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    let want: Vec<f32> = values(x.as_tensor())
        .iter()
        .map(|v| 4.0 + 18.0 * v)
        .collect();
    for (a, b) in values(g).iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn a_first_gradient_that_is_a_view_is_stored_contiguous() {
    // x reaches the loss only through a transpose, whose backward gives a
    // transposed (non-contiguous) view of the incoming gradient.
    let x = Var::from_vec((0..6).map(|v| v as f32).collect(), (2, 3), &Device::Cpu).unwrap();
    let c = Tensor::from_vec((1..=6).map(|v| v as f32).collect(), (3, 2), &Device::Cpu).unwrap();
    let loss = (x.as_tensor().t().unwrap() * &c)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(g.dims(), &[2, 3]);
    assert_eq!(values(g), values(&c.t().unwrap()));
}

/// Identity forward; its backward returns a gradient of the wrong shape
/// (`BadGrad(false)`) or the wrong dtype (`BadGrad(true)`).
struct BadGrad(bool);

impl CustomOp1 for BadGrad {
    fn name(&self) -> &'static str {
        "wrong-shape-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("f32 only");
        };
        let v = match layout.contiguous_offsets() {
            Some((a, b)) => v[a..b].to_vec(),
            None => candle_core::bail!("contiguous only"),
        };
        Ok((CpuStorage::F32(v), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if self.0 {
            return Ok(Some(grad_res.to_dtype(candle_core::DType::F64)?));
        }
        Ok(Some(grad_res.flatten_all()?))
    }
}

#[test]
fn a_gradient_of_the_wrong_shape_or_dtype_is_an_error() {
    for (wrong_dtype, message) in [(false, "shape mismatch"), (true, "dtype mismatch")] {
        let x = Var::from_vec(vec![1f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        let y = x.as_tensor().apply_op1(BadGrad(wrong_dtype)).unwrap();
        let err = y.sum_all().unwrap().backward().unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}
