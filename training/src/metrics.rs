//! Classification metrics: accuracy, per-class precision / recall / F1 and the
//! confusion matrix, plus batched evaluation of a network on a dataset.

use std::fmt;

use anyhow::{Context, Result};
use candle_core::{D, Device, Tensor};
use candle_nn::ModuleT;
use models::EmotionNet;
use serde::{Deserialize, Serialize};

use crate::augment::{BatchMode, make_batch};
use crate::data::Dataset;

/// A confusion matrix: `counts[truth * k + predicted]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Class names.
    pub classes: Vec<String>,
    /// Row-major `k x k` counts, rows are the true classes.
    pub counts: Vec<u64>,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassScores {
    /// Of the samples predicted as the class, the fraction that are.
    pub precision: f64,
    /// Of the samples of the class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
    /// Samples of the class.
    pub support: u64,
}

impl Confusion {
    /// An empty matrix.
    pub fn new(classes: Vec<String>) -> Self {
        let k = classes.len();
        Self {
            classes,
            counts: vec![0; k * k],
        }
    }

    /// Records one prediction.
    pub fn add(&mut self, truth: usize, predicted: usize) {
        let k = self.classes.len();
        if truth < k && predicted < k {
            self.counts[truth * k + predicted] += 1;
        }
    }

    /// Samples recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Correct predictions.
    pub fn correct(&self) -> u64 {
        let k = self.classes.len();
        (0..k).map(|i| self.counts[i * k + i]).sum()
    }

    /// Fraction correct (0 when empty).
    pub fn accuracy(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            t => self.correct() as f64 / t as f64,
        }
    }

    /// Scores of every class.
    pub fn per_class(&self) -> Vec<ClassScores> {
        let k = self.classes.len();
        (0..k)
            .map(|c| {
                let tp = self.counts[c * k + c] as f64;
                let predicted: u64 = (0..k).map(|r| self.counts[r * k + c]).sum();
                let support: u64 = self.counts[c * k..(c + 1) * k].iter().sum();
                let precision = if predicted == 0 {
                    0.0
                } else {
                    tp / predicted as f64
                };
                let recall = if support == 0 {
                    0.0
                } else {
                    tp / support as f64
                };
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassScores {
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }
}

impl fmt::Display for Confusion {
    /// Per-class scores, then the matrix (rows: truth, columns: prediction).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.classes.len();
        writeln!(
            f,
            "{:<10}{:>10}{:>10}{:>10}{:>9}",
            "class", "precision", "recall", "f1", "support"
        )?;
        for (name, s) in self.classes.iter().zip(self.per_class()) {
            writeln!(
                f,
                "{name:<10}{:>10.4}{:>10.4}{:>10.4}{:>9}",
                s.precision, s.recall, s.f1, s.support
            )?;
        }
        writeln!(f)?;
        write!(f, "{:<10}", "truth\\pred")?;
        for name in &self.classes {
            write!(f, "{:>9}", &name[..name.len().min(8)])?;
        }
        for (r, name) in self.classes.iter().enumerate() {
            writeln!(f)?;
            write!(f, "{name:<10}")?;
            for c in 0..k {
                write!(f, "{:>9}", self.counts[r * k + c])?;
            }
        }
        Ok(())
    }
}

/// The result of evaluating a network on some samples.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Confusion matrix.
    pub confusion: Confusion,
    /// Per sample, in order: the top-1 probability.
    pub top1: Vec<f32>,
    /// Per sample, in order: whether the prediction was right.
    pub correct: Vec<bool>,
    /// Per sample, in order: the probabilities.
    pub probs: Vec<Vec<f32>>,
    /// Per sample, in order: the true label.
    pub truth: Vec<usize>,
}

/// One point of a risk-coverage curve: with the confidence gate at
/// `threshold`, the share of faces answered and the accuracy on them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CoveragePoint {
    /// Smallest top-1 probability answered.
    pub threshold: f32,
    /// Share of faces answered (top-1 at or above the threshold).
    pub coverage: f64,
    /// Accuracy on the answered faces (`NaN` when none is answered).
    pub accuracy: f64,
}

/// The risk-coverage curve of a confidence gate at each of `thresholds`.
pub fn risk_coverage(top1: &[f32], correct: &[bool], thresholds: &[f32]) -> Vec<CoveragePoint> {
    let n = top1.len().min(correct.len());
    thresholds
        .iter()
        .map(|&threshold| {
            let (mut kept, mut right) = (0usize, 0usize);
            for (&p, &ok) in top1.iter().zip(correct).take(n) {
                if p >= threshold {
                    kept += 1;
                    right += usize::from(ok);
                }
            }
            CoveragePoint {
                threshold,
                coverage: kept as f64 / n.max(1) as f64,
                accuracy: if kept > 0 {
                    right as f64 / kept as f64
                } else {
                    f64::NAN
                },
            }
        })
        .collect()
}

/// The threshold (rounded down to 0.01) that keeps at least `coverage` of
/// the faces: the `1 - coverage` quantile of the top-1 probabilities.
pub fn threshold_for_coverage(top1: &[f32], coverage: f64) -> f32 {
    let mut v: Vec<f32> = top1.iter().copied().filter(|p| p.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    let drop = ((1.0 - coverage.clamp(0.0, 1.0)) * v.len() as f64).floor() as usize;
    let t = v[drop.min(v.len() - 1)];
    (t * 100.0).floor() / 100.0
}

/// Evaluates `net` (eval mode) on `indices` of `ds` in batches. With `tta`,
/// each face's probabilities are averaged over its views ([`tta_views`]).
pub fn evaluate(
    net: &EmotionNet,
    ds: &Dataset,
    indices: &[usize],
    batch_size: usize,
    tta: perception::Tta,
    device: &Device,
) -> Result<Evaluation> {
    evaluate_ensemble(&[net], ds, indices, batch_size, tta, device)
}

/// [`evaluate`] for an ensemble: each face's probabilities are averaged
/// over every network of `nets` and every view of `tta`, with equal weights.
pub fn evaluate_ensemble(
    nets: &[&EmotionNet],
    ds: &Dataset,
    indices: &[usize],
    batch_size: usize,
    tta: perception::Tta,
    device: &Device,
) -> Result<Evaluation> {
    anyhow::ensure!(!nets.is_empty(), "an ensemble needs at least one network");
    let mut confusion = Confusion::new(ds.classes().to_vec());
    let mut loss_sum = 0.0;
    let (mut top1, mut correct) = (Vec::new(), Vec::new());
    let (mut all_probs, mut all_truth) = (Vec::new(), Vec::new());
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = make_batch(ds, chunk, BatchMode::Plain, device)?;
        let views = tta_views(&batch.images, tta)?;
        let mut probs: Option<Tensor> = None;
        for net in nets {
            for v in &views {
                let p = candle_nn::ops::softmax(&net.forward_t(v, false)?, D::Minus1)?;
                probs = Some(match probs {
                    Some(sum) => (sum + p)?,
                    None => p,
                });
            }
        }
        let members = nets.len() * views.len();
        let mut probs = probs.context("no views")?;
        if members > 1 {
            probs = (probs / members as f64)?;
        }
        let logp = probs.clamp(1e-12, 1.0)?.log()?;
        let nll = logp
            .gather(&batch.labels.unsqueeze(1)?, 1)?
            .sum_all()?
            .to_scalar::<f32>()?;
        loss_sum -= f64::from(nll);
        let pred = probs.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let best = probs.max(D::Minus1)?.to_vec1::<f32>()?;
        all_probs.extend(probs.to_vec2::<f32>()?);
        let truth = batch.labels.to_vec1::<u32>()?;
        all_truth.extend(truth.iter().map(|&t| t as usize));
        for ((t, p), b) in truth.iter().zip(&pred).zip(best) {
            confusion.add(*t as usize, *p as usize);
            top1.push(b);
            correct.push(t == p);
        }
    }
    Ok(Evaluation {
        loss: loss_sum / indices.len().max(1) as f64,
        confusion,
        top1,
        correct,
        probs: all_probs,
        truth: all_truth,
    })
}

/// Mirrors `(N, C, H, W)` images left-right.
pub fn flip_horizontal(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let idx: Vec<u32> = (0..w as u32).rev().collect();
    let idx = Tensor::new(idx.as_slice(), x.device())?;
    Ok(x.index_select(&idx, 3)?)
}

/// A batch `(n, c, h, w)` moved by `(dx, dy)` pixels, the border repeated
/// (as [`perception::GrayCrop::transformed`]).
pub fn shift(x: &Tensor, dx: isize, dy: isize) -> Result<Tensor> {
    let index = |n: usize, d: isize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..n as isize)
            .map(|i| (i - d).clamp(0, n as isize - 1) as u32)
            .collect();
        Ok(Tensor::new(idx.as_slice(), x.device())?)
    };
    let x = x.index_select(&index(x.dim(3)?, dx)?, 3)?;
    Ok(x.index_select(&index(x.dim(2)?, dy)?, 2)?)
}

/// The views of a batch that test-time augmentation `tta` averages over,
/// in [`perception::Tta::apply`]'s order.
pub fn tta_views(x: &Tensor, tta: perception::Tta) -> Result<Vec<Tensor>> {
    let mut views = vec![x.clone()];
    if tta != perception::Tta::None {
        views.push(flip_horizontal(x)?);
    }
    if tta == perception::Tta::FlipShift {
        for (dx, dy) in perception::Tta::SHIFTS {
            views.push(shift(x, dx, dy)?);
        }
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_views_match_the_crop_views() {
        let n = models::INPUT_SIZE;
        let pixels: Vec<u8> = (0..n * n).map(|i| (i * 7 % 256) as u8).collect();
        let crop = perception::GrayCrop::new(pixels.clone()).unwrap();
        let x = Tensor::from_vec(
            pixels.iter().map(|&p| f32::from(p)).collect::<Vec<f32>>(),
            (1, 1, n, n),
            &Device::Cpu,
        )
        .unwrap();
        let tensors = tta_views(&x, perception::Tta::FlipShift).unwrap();
        let crops = perception::Tta::FlipShift.apply(&crop);
        assert_eq!(tensors.len(), crops.len());
        for (t, c) in tensors.iter().zip(&crops) {
            let t: Vec<u8> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as u8)
                .collect();
            assert_eq!(t, c.pixels());
        }
    }

    #[test]
    fn risk_coverage_of_a_known_set() {
        let top1 = [0.9, 0.8, 0.6, 0.4, 0.3];
        let correct = [true, true, false, true, false];
        let c = risk_coverage(&top1, &correct, &[0.0, 0.5, 0.85, 0.95]);
        assert_eq!((c[0].coverage, c[0].accuracy), (1.0, 0.6));
        assert_eq!(c[1].coverage, 0.6);
        assert!((c[1].accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((c[2].coverage, c[2].accuracy), (0.2, 1.0));
        assert!(c[3].accuracy.is_nan() && c[3].coverage == 0.0);
        // Keeping 60% drops the two least confident: threshold 0.6.
        assert_eq!(threshold_for_coverage(&top1, 0.6), 0.6);
        assert_eq!(threshold_for_coverage(&top1, 1.0), 0.3);
        assert_eq!(threshold_for_coverage(&[], 0.5), 0.0);
    }

    #[test]
    fn scores_from_a_small_matrix() {
        let mut c = Confusion::new(vec!["a".into(), "b".into()]);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1)] {
            c.add(t, p);
        }
        assert_eq!((c.correct(), c.total()), (3, 4));
        let s = c.per_class();
        assert!((s[0].precision - 1.0).abs() < 1e-12);
        assert!((s[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[1].precision - 0.5).abs() < 1e-12);
        assert!((s[1].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!(c.to_string().contains("truth\\pred"));
        assert_eq!(Confusion::new(vec!["a".into()]).accuracy(), 0.0);
    }
}
