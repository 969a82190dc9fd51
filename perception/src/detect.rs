//! MTCNN face detection, step for step as facenet-pytorch 2.6.0's `detect_face`
//! (so its published weights give the same boxes and landmarks): an image
//! pyramid through P-Net, candidates refined by R-Net on 24x24 crops, then
//! O-Net on 48x48 crops for the final boxes, scores and five landmarks.

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use models::mtcnn::Mtcnn;
use models::mtcnn_engine::{MtcnnEngine, MtcnnScratch};
use models::yunet::{YuNet, YuNetScratch};

use crate::PerceptionError;
use crate::frame::{Frame, PixelFormat};

/// Detector settings. The defaults are facenet-pytorch's, except the minimum
/// face size (40 px instead of 20: a webcam user sits close, and smaller
/// faces are too small to read an expression from).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Smallest face side, in pixels of the frame, the pyramid looks for.
    pub min_face_size: f32,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Ratio between successive pyramid scales.
    pub scale_factor: f64,
    /// Frames with a longer side are first shrunk to this side (area
    /// resampling) so that huge images cannot exhaust memory; boxes and
    /// landmarks are still given in the frame's own pixels.
    pub max_side: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            min_face_size: 40.0,
            thresholds: [0.6, 0.7, 0.7],
            scale_factor: 0.709,
            max_side: 2048,
        }
    }
}

impl DetectorConfig {
    fn check(&self) -> Result<(), PerceptionError> {
        let bad = |reason: &str| Err(PerceptionError::Config(reason.to_owned()));
        if self.min_face_size.is_nan() || self.min_face_size < 12.0 {
            return bad("min_face_size must be at least 12 pixels");
        }
        if !(0.1..0.95).contains(&self.scale_factor) || self.scale_factor <= 0.1 {
            return bad("scale_factor must be between 0.1 and 0.95");
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return bad("thresholds must be between 0 and 1");
        }
        if self.max_side < 48 {
            return bad("max_side must be at least 48");
        }
        Ok(())
    }
}

/// One detected face, in the frame's pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// O-Net's face probability.
    pub score: f32,
    /// Left eye, right eye, nose, left mouth corner, right mouth corner, `[x, y]`
    /// ("left" as seen in the image).
    pub landmarks: [[f32; 2]; 5],
}

impl Detection {
    /// The box as `[x, y, width, height]`.
    pub fn xywh(&self) -> [f32; 4] {
        let [x1, y1, x2, y2] = self.bbox;
        [x1, y1, x2 - x1, y2 - y1]
    }

    /// The box's area.
    pub fn area(&self) -> f32 {
        let [_, _, w, h] = self.xywh();
        w.max(0.0) * h.max(0.0)
    }

    /// Intersection over union with another box `[x1, y1, x2, y2]`.
    pub fn iou(&self, other: &[f32; 4]) -> f32 {
        box_iou(&self.bbox, other)
    }
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes (an inverted box
/// counts as empty).
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The three networks and the algorithm around them. `Send + Sync`; no global
/// state. The networks run on [`MtcnnEngine`] (im2col + GEMM and Winograd
/// on reused buffers); [`Detector::set_reference_path`] switches to the
/// candle graphs it is tested against.
///
/// With [`Detector::with_yunet`], whole frames are searched by YuNet instead
/// of the P-Net pyramid and R-Net (see [`Finder`]); O-Net still gives the
/// final boxes, scores and landmarks, and [`Detector::refine`] is unchanged.
#[derive(Debug, Clone)]
pub struct Detector {
    nets: Mtcnn,
    engine: Arc<MtcnnEngine>,
    /// Engine buffers, one per thread detecting at the same time.
    scratch: ScratchPool<MtcnnScratch>,
    yunet: Option<Arc<YuNet>>,
    yunet_scratch: ScratchPool<YuNetScratch>,
    reference: bool,
    config: DetectorConfig,
    device: Device,
}

/// What searches a whole frame for faces ([`Detector::finder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finder {
    /// MTCNN's cascade: P-Net over an image pyramid, R-Net, then O-Net.
    Mtcnn,
    /// YuNet, one pass over the frame shrunk so that the minimum face size
    /// becomes [`YUNET_FACE_PX`] pixels (never enlarged), proposes faces;
    /// O-Net then verifies each and gives its box and landmarks, as in
    /// the MTCNN cascade.
    YuNet,
}

/// The side, in YuNet's input pixels, that the minimum face size is shrunk
/// to (YuNet's finest level has stride 8 and finds faces down to about 10
/// pixels).
pub const YUNET_FACE_PX: f32 = 16.0;

/// YuNet's score threshold for a proposal (O-Net's threshold decides).
pub const YUNET_THRESHOLD: f32 = 0.5;

/// Idle scratch buffers: a call takes one (or makes one) and puts it back.
/// A clone of a detector starts with an empty pool of its own.
#[derive(Debug, Default)]
struct ScratchPool<S>(Mutex<Vec<S>>);

impl<S> Clone for ScratchPool<S> {
    fn clone(&self) -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<S: Default> ScratchPool<S> {
    fn with<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        let taken = self.0.lock().ok().and_then(|mut v| v.pop());
        let mut s = taken.unwrap_or_default();
        let out = f(&mut s);
        if let Ok(mut v) = self.0.lock() {
            v.push(s);
        }
        out
    }
}

/// R-Net's or O-Net's answers for a batch of crops.
struct StageOut {
    /// Face probability per crop.
    prob: Vec<f32>,
    /// Box regression, 4 per crop.
    reg: Vec<f32>,
    /// O-Net only: landmarks, 10 per crop (x of the five points, then y).
    landmarks: Vec<f32>,
}

/// A candidate box during the cascade.
#[derive(Debug, Clone, Copy)]
struct Cand {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// The frame as three summed-area tables (one per RGB channel): every box
/// average of PyTorch's area resampling is then four reads, and since the
/// sums of 8-bit pixels are exact integers (`255 * 2048^2 < 2^32`), the
/// averages equal PyTorch's `sum / kh / kw` exactly.
struct Planes {
    w: usize,
    h: usize,
    /// `3 x (h + 1) x (w + 1)`, row 0 and column 0 zero.
    sums: Vec<u32>,
}

/// A full detection under way ([`Detector::start_detection`]).
pub struct DetectionJob {
    work: JobWork,
    result: Option<Vec<Detection>>,
}

enum JobWork {
    Pyramid(Pyramid),
    /// YuNet's input (the frame shrunk, BGR, channel-last), its size, the
    /// frame pixels per input pixel, and the frame for O-Net's crops.
    SingleShot {
        input: Vec<f32>,
        size: (usize, usize),
        back: (f32, f32),
        frame: Frame,
    },
}

/// MTCNN's state: the frame's tables, the pyramid levels still to run and
/// the candidates so far.
struct Pyramid {
    img: Planes,
    /// Frame pixels per table pixel, for a frame shrunk to `max_side`.
    back: Option<(f32, f32)>,
    scales: Vec<f64>,
    next_level: usize,
    found: Vec<Cand>,
    /// R-Net's candidates, once it has run.
    rnet_passed: Option<Vec<Cand>>,
}

impl std::fmt::Debug for DetectionJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("DetectionJob");
        match &self.work {
            JobWork::Pyramid(p) => d
                .field("finder", &Finder::Mtcnn)
                .field("size", &(p.img.w, p.img.h))
                .field("levels_done", &p.next_level)
                .field("levels", &p.scales.len()),
            JobWork::SingleShot { size, .. } => {
                d.field("finder", &Finder::YuNet).field("input", size)
            }
        };
        d.field("done", &self.result.is_some()).finish()
    }
}

impl DetectionJob {
    /// Whether the detection is finished.
    pub fn is_done(&self) -> bool {
        self.result.is_some()
    }

    /// The faces, largest first, once finished (then `None` again).
    pub fn take_result(&mut self) -> Option<Vec<Detection>> {
        self.result.take()
    }
}

impl Planes {
    fn from_frame(frame: &Frame) -> Self {
        let ch = frame.format().channels();
        let (w, h) = (frame.width(), frame.height());
        let bytes = frame.data();
        let stride = w + 1;
        let plane = (h + 1) * stride;
        let mut sums = vec![0u32; 3 * plane];
        for c in 0..3 {
            let src_c = if ch == 1 { 0 } else { c };
            let table = &mut sums[c * plane..][..plane];
            for y in 0..h {
                let mut row_sum = 0u32;
                let src = &bytes[y * w * ch..][..w * ch];
                let (above, below) = table.split_at_mut((y + 1) * stride);
                let above = &above[y * stride..];
                let dst = &mut below[..stride];
                for x in 0..w {
                    row_sum += u32::from(src[x * ch + src_c]);
                    dst[x + 1] = above[x + 1] + row_sum;
                }
            }
        }
        Self { w, h, sums }
    }

    /// The frame area-averaged down to `w x h` (rounded to 8 bits) without
    /// first converting the whole frame (frames beyond `max_side` can be huge).
    fn shrunk_from_frame(frame: &Frame, w: usize, h: usize) -> Result<Self, PerceptionError> {
        let (fw, fh) = (frame.width(), frame.height());
        let cols: Vec<(usize, usize)> = (0..w)
            .map(|j| ((j * fw) / w, ((j + 1) * fw).div_ceil(w)))
            .collect();
        let mut acc = vec![0f32; 3 * w];
        let mut out = vec![0u8; 3 * w * h];
        let mut row = vec![0f32; 3 * fw];
        for i in 0..h {
            let (s, e) = ((i * fh) / h, ((i + 1) * fh).div_ceil(h));
            acc.fill(0.0);
            for y in s..e {
                for x in 0..fw {
                    let p = frame.rgb_at(x, y);
                    for c in 0..3 {
                        row[c * fw + x] = f32::from(p[c]);
                    }
                }
                for c in 0..3 {
                    let src = &row[c * fw..][..fw];
                    for (j, &(a, b)) in cols.iter().enumerate() {
                        acc[j * 3 + c] += src[a..b].iter().sum::<f32>() / (b - a) as f32;
                    }
                }
            }
            let inv = 1.0 / (e - s) as f32;
            for (o, a) in out[i * w * 3..][..w * 3].iter_mut().zip(&acc) {
                *o = (a * inv).round().clamp(0.0, 255.0) as u8;
            }
        }
        Ok(Self::from_frame(&Frame::new(w, h, PixelFormat::Rgb8, out)?))
    }

    /// PyTorch's `interpolate(mode="area")` (adaptive average pooling) of the
    /// region `x0..x1, y0..y1` to `oh x ow`, written into `out` (`3 x oh x ow`),
    /// optionally normalised to `(v - 127.5) / 128`.
    fn resize_into(
        &self,
        (x0, y0, x1, y1): (usize, usize, usize, usize),
        oh: usize,
        ow: usize,
        normalise: bool,
        out: &mut [f32],
    ) {
        let (rw, rh) = (x1 - x0, y1 - y0);
        let stride = self.w + 1;
        let plane = (self.h + 1) * stride;
        let cols: Vec<(usize, usize, f32)> = (0..ow)
            .map(|j| {
                let (s, e) = ((j * rw) / ow, ((j + 1) * rw).div_ceil(ow));
                (x0 + s, x0 + e, (e - s) as f32)
            })
            .collect();
        let (scale, shift) = if normalise {
            (0.0078125f32, -127.5f32)
        } else {
            (1.0, 0.0)
        };
        for c in 0..3 {
            let table = &self.sums[c * plane..][..plane];
            for i in 0..oh {
                let (s, e) = ((i * rh) / oh, ((i + 1) * rh).div_ceil(oh));
                let kh = (e - s) as f32;
                let top = &table[(y0 + s) * stride..][..stride];
                let bottom = &table[(y0 + e) * stride..][..stride];
                let dst = &mut out[(c * oh + i) * ow..][..ow];
                for (d, &(a, b, kw)) in dst.iter_mut().zip(&cols) {
                    let sum = (bottom[b] - bottom[a]) - (top[b] - top[a]);
                    // PyTorch: sum / kh / kw, in this order.
                    *d = (sum as f32 / kh / kw + shift) * scale;
                }
            }
        }
    }
}

/// PyTorch's `interpolate(mode="area")` of the frame region
/// `x0..x1, y0..y1` to `side x side`, normalised to `(v - 127.5) / 128`, into
/// `out` (`3 x side x side`): what [`Planes::resize_into`] gives on the
/// region's tables, bit for bit (the block sums are exact integers either
/// way), without building the tables.
fn area_crop(frame: &Frame, region: (usize, usize, usize, usize), side: usize, out: &mut [f32]) {
    area_resample(frame, region, (side, side), |i, j, c, v| {
        out[(c * side + i) * side + j] = (v - 127.5) * 0.0078125;
    });
}

/// Area resampling (PyTorch's `interpolate(mode="area")`) of the frame region
/// `x0..x1, y0..y1` to `oh x ow`: `emit(row, column, channel, average)` for
/// each output value, channels red, green, blue (gray frames give three
/// equal ones). Each pixel of the region is read once into per-column-block
/// sums, which are then summed over row blocks: for a few crops of a large
/// frame, far less work than summed-area tables, and for a whole frame one
/// pass over its bytes.
pub(crate) fn area_resample(
    frame: &Frame,
    (x0, y0, x1, y1): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    mut emit: impl FnMut(usize, usize, usize, f32),
) {
    let (rw, rh) = (x1 - x0, y1 - y0);
    let ch = frame.format().channels();
    let fw = frame.width();
    let bytes = frame.data();
    let block = |k: usize, n: usize, side: usize| ((k * n) / side, ((k + 1) * n).div_ceil(side));
    let cols: Vec<(usize, usize)> = (0..ow).map(|j| block(j, rw, ow)).collect();
    // Row `y` of the region: for each column block and channel, its sum.
    let mut colsum = vec![0u32; rh * ow * 3];
    for (y, sums) in colsum.chunks_exact_mut(ow * 3).enumerate() {
        let row = &bytes[((y0 + y) * fw + x0) * ch..][..rw * ch];
        for (j, &(a, b)) in cols.iter().enumerate() {
            let mut acc = [0u32; 3];
            for px in row[a * ch..b * ch].chunks_exact(ch) {
                acc[0] += u32::from(px[0]);
                if ch > 1 {
                    acc[1] += u32::from(px[1]);
                    acc[2] += u32::from(px[2]);
                }
            }
            if ch == 1 {
                acc = [acc[0]; 3];
            }
            sums[j * 3..j * 3 + 3].copy_from_slice(&acc);
        }
    }
    let mut acc = vec![0u32; ow * 3];
    for i in 0..oh {
        let (s, e) = block(i, rh, oh);
        acc.fill(0);
        for sums in colsum[s * ow * 3..e * ow * 3].chunks_exact(ow * 3) {
            for (a, v) in acc.iter_mut().zip(sums) {
                *a += v;
            }
        }
        let kh = (e - s) as f32;
        for (j, &(a, b)) in cols.iter().enumerate() {
            let kw = (b - a) as f32;
            for c in 0..3 {
                // PyTorch: sum / kh / kw, in this order.
                emit(i, j, c, acc[j * 3 + c] as f32 / kh / kw);
            }
        }
    }
}

impl Detector {
    /// Wraps loaded networks.
    pub fn new(nets: Mtcnn, config: DetectorConfig) -> Result<Self, PerceptionError> {
        config.check()?;
        Ok(Self {
            engine: Arc::new(MtcnnEngine::new(&nets)?),
            nets,
            scratch: ScratchPool::default(),
            yunet: None,
            yunet_scratch: ScratchPool::default(),
            reference: false,
            config,
            device: Device::Cpu,
        })
    }

    /// Searches whole frames with YuNet ([`Finder::YuNet`]) from now on.
    pub fn with_yunet(mut self, net: YuNet) -> Self {
        self.yunet = Some(Arc::new(net));
        self
    }

    /// Goes back to MTCNN's pyramid for whole frames ([`Finder::Mtcnn`]).
    pub fn without_yunet(mut self) -> Self {
        self.yunet = None;
        self
    }

    /// What searches whole frames.
    pub fn finder(&self) -> Finder {
        if self.yunet.is_some() {
            Finder::YuNet
        } else {
            Finder::Mtcnn
        }
    }

    /// Runs the networks as candle graphs (`true`) instead of on
    /// [`MtcnnEngine`] (the default): the reference path, for parity tests
    /// and for benchmarks that time the engine against it.
    pub fn set_reference_path(&mut self, on: bool) {
        self.reference = on;
    }

    /// P-Net on one normalised `(3, h, w)` image: face probability per
    /// position, box regression (4 planes) and the output size.
    fn run_pnet(
        &self,
        data: Vec<f32>,
        (h, w): (usize, usize),
    ) -> Result<(Vec<f32>, Vec<f32>, usize, usize), PerceptionError> {
        if !self.reference {
            return Ok(self.scratch.with(|s| {
                let (oh, ow) = self.engine.pnet(&data, (h, w), s);
                (s.prob.clone(), s.reg.clone(), oh, ow)
            }));
        }
        let x = Tensor::from_vec(data, (1, 3, h, w), &self.device)?;
        let (reg, prob) = self.nets.pnet.forward(&x)?;
        let (_, _, oh, ow) = prob.dims4()?;
        let prob = prob.flatten_all()?.to_vec1::<f32>()?;
        let reg = reg.flatten_all()?.to_vec1::<f32>()?;
        Ok((prob[oh * ow..].to_vec(), reg, oh, ow))
    }

    /// R-Net (`side` 24) or O-Net (`side` 48) on `n` normalised crops.
    fn run_refiner(
        &self,
        data: Vec<f32>,
        n: usize,
        side: usize,
    ) -> Result<StageOut, PerceptionError> {
        if !self.reference {
            return Ok(self.scratch.with(|s| {
                if side == 24 {
                    self.engine.rnet(&data, n, s);
                } else {
                    self.engine.onet(&data, n, s);
                }
                StageOut {
                    prob: s.prob.clone(),
                    reg: s.reg.clone(),
                    landmarks: if side == 24 {
                        Vec::new()
                    } else {
                        s.landmarks.clone()
                    },
                }
            }));
        }
        let x = Tensor::from_vec(data, (n, 3, side, side), &self.device)?;
        let face = |p: Tensor| -> Result<Vec<f32>, PerceptionError> {
            Ok(p.to_vec2::<f32>()?.iter().map(|r| r[1]).collect())
        };
        let flat = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
        if side == 24 {
            let (reg, prob) = self.nets.rnet.forward(&x)?;
            return Ok(StageOut {
                prob: face(prob)?,
                reg: flat(reg)?,
                landmarks: Vec::new(),
            });
        }
        let (reg, lms, prob) = self.nets.onet.forward(&x)?;
        Ok(StageOut {
            prob: face(prob)?,
            reg: flat(reg)?,
            landmarks: flat(lms)?,
        })
    }

    /// Loads `mtcnn.safetensors` from a file.
    pub fn from_file(
        path: impl AsRef<Path>,
        config: DetectorConfig,
    ) -> Result<Self, PerceptionError> {
        Self::new(Mtcnn::from_file(path, &Device::Cpu)?, config)
    }

    /// Loads `mtcnn.safetensors` bytes already in memory (e.g. a Bevy asset).
    pub fn from_bytes(bytes: &[u8], config: DetectorConfig) -> Result<Self, PerceptionError> {
        Self::new(Mtcnn::from_bytes(bytes, &Device::Cpu)?, config)
    }

    /// A detector whose networks have all-zero weights: it finds no face.
    /// For tests and benchmarks that need a detector of the right shape,
    /// never for predictions.
    pub fn zeroed(config: DetectorConfig) -> Result<Self, PerceptionError> {
        Self::new(Mtcnn::new_zeroed(&Device::Cpu)?, config)
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Changes the settings.
    pub fn set_config(&mut self, config: DetectorConfig) -> Result<(), PerceptionError> {
        config.check()?;
        self.config = config;
        Ok(())
    }

    /// All faces in `frame`, largest first. Frames too small to hold a face of
    /// the minimum size give an empty list.
    pub fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, PerceptionError> {
        if let Some(net) = &self.yunet {
            // As a job would, without keeping a copy of the frame.
            let (input, size, back) = self.yunet_input(frame);
            return self.single_shot(net, &input, size, back, frame);
        }
        let mut job = self.start_detection(frame)?;
        while !self.step_detection(&mut job)? {}
        Ok(job.take_result().unwrap_or_default())
    }

    /// Starts a full detection of `frame` that [`Detector::step_detection`]
    /// carries out a slice at a time: a video pipeline can spread it over the
    /// idle time between frames instead of stalling one frame by the whole
    /// pyramid. The job keeps what it needs of the frame (summed-area
    /// tables, or YuNet's shrunk input and a copy for O-Net's crops; in
    /// memory only), so the frame need not outlive this call. Stepped to the
    /// end, it gives exactly what [`Detector::detect`] gives.
    pub fn start_detection(&self, frame: &Frame) -> Result<DetectionJob, PerceptionError> {
        if self.yunet.is_some() {
            let (input, size, back) = self.yunet_input(frame);
            return Ok(DetectionJob {
                work: JobWork::SingleShot {
                    input,
                    size,
                    back,
                    frame: frame.clone(),
                },
                result: None,
            });
        }
        let side = frame.width().max(frame.height());
        let (img, back) = if side > self.config.max_side {
            // Shrink first, then map the results back.
            let k = self.config.max_side as f32 / side as f32;
            let (w, h) = (
                ((frame.width() as f32 * k).round() as usize).max(1),
                ((frame.height() as f32 * k).round() as usize).max(1),
            );
            let back = (
                frame.width() as f32 / w as f32,
                frame.height() as f32 / h as f32,
            );
            (Planes::shrunk_from_frame(frame, w, h)?, Some(back))
        } else {
            (Planes::from_frame(frame), None)
        };
        let scales = self.scales(img.w, img.h);
        Ok(DetectionJob {
            work: JobWork::Pyramid(Pyramid {
                img,
                back,
                scales,
                next_level: 0,
                found: Vec::new(),
                rnet_passed: None,
            }),
            result: None,
        })
    }

    /// The frame area-shrunk for YuNet (so the minimum face becomes
    /// [`YUNET_FACE_PX`], and no side exceeds `max_side`), as BGR
    /// channel-last values; its size `(h, w)` and the frame pixels per
    /// input pixel.
    fn yunet_input(&self, frame: &Frame) -> (Vec<f32>, (usize, usize), (f32, f32)) {
        let (fw, fh) = (frame.width(), frame.height());
        let side = fw.max(fh) as f32;
        let k = (YUNET_FACE_PX / self.config.min_face_size)
            .min(self.config.max_side as f32 / side)
            .min(1.0);
        let w = ((fw as f32 * k).round() as usize).max(1);
        let h = ((fh as f32 * k).round() as usize).max(1);
        let mut input = vec![0f32; h * w * 3];
        area_resample(frame, (0, 0, fw, fh), (h, w), |i, j, c, v| {
            input[(i * w + j) * 3 + 2 - c] = v;
        });
        (input, (h, w), (fw as f32 / w as f32, fh as f32 / h as f32))
    }

    /// YuNet's proposals, in frame pixels, verified by O-Net on the frame.
    fn single_shot(
        &self,
        net: &YuNet,
        input: &[f32],
        size: (usize, usize),
        (sx, sy): (f32, f32),
        frame: &Frame,
    ) -> Result<Vec<Detection>, PerceptionError> {
        let faces = self
            .yunet_scratch
            .with(|s| net.detect(input, size, YUNET_THRESHOLD, 0.45, s));
        // Proposals well below the minimum face size are not looked at, as
        // the pyramid never looks at them.
        let min_side = 0.7 * self.config.min_face_size;
        let proposals: Vec<Detection> = faces
            .into_iter()
            .map(|f| Detection {
                bbox: [
                    f.bbox[0] * sx,
                    f.bbox[1] * sy,
                    f.bbox[2] * sx,
                    f.bbox[3] * sy,
                ],
                score: f.score,
                landmarks: f.landmarks.map(|[x, y]| [x * sx, y * sy]),
            })
            .filter(|d| {
                let [_, _, w, h] = d.xywh();
                w.max(h) >= min_side
            })
            .collect();
        self.refine(frame, &proposals)
    }

    /// Carries `job` one slice further and says whether it is finished (then
    /// [`DetectionJob::take_result`] has the faces). A slice is either
    /// P-Net on pyramid levels worth about as many pixels as the largest
    /// level, or, once the pyramid is done, R-Net on its candidates, then
    /// O-Net on R-Net's: a 640x480 frame with a face takes about five. With
    /// [`Finder::YuNet`] it is one slice: YuNet, then O-Net on its proposals.
    pub fn step_detection(&self, job: &mut DetectionJob) -> Result<bool, PerceptionError> {
        if job.result.is_some() {
            return Ok(true);
        }
        job.result = match &mut job.work {
            JobWork::Pyramid(p) => self.step_pyramid(p)?,
            JobWork::SingleShot {
                input,
                size,
                back,
                frame,
            } => {
                let net = self.yunet.clone().ok_or_else(|| {
                    PerceptionError::Config(
                        "a YuNet detection job needs a detector with YuNet".into(),
                    )
                })?;
                Some(self.single_shot(&net, input, *size, *back, frame)?)
            }
        };
        Ok(job.result.is_some())
    }

    /// One slice of MTCNN's cascade: the faces once it is finished.
    fn step_pyramid(&self, job: &mut Pyramid) -> Result<Option<Vec<Detection>>, PerceptionError> {
        let level_pixels = |scale: f64| {
            let hs = (job.img.h as f64 * scale + 1.0) as usize;
            let ws = (job.img.w as f64 * scale + 1.0) as usize;
            hs * ws
        };
        if job.next_level < job.scales.len() {
            let budget = job.scales.first().map_or(0, |&s| level_pixels(s));
            let mut spent = 0;
            while let Some(&scale) = job.scales.get(job.next_level) {
                let pixels = level_pixels(scale);
                if spent > 0 && spent + pixels > budget {
                    break;
                }
                let found = self.pnet_level(&job.img, scale, self.config.thresholds[0])?;
                job.found.extend(found);
                job.next_level += 1;
                spent += pixels;
            }
            return Ok(None);
        }
        // R-Net on the pyramid's candidates in one slice (they can be
        // dozens), O-Net on R-Net's in the next (at once if none passed).
        if job.rnet_passed.is_none() {
            let cands = merge_levels(std::mem::take(&mut job.found));
            let passed = self.stage2(&job.img, cands, self.config.thresholds[1])?;
            let more = !passed.is_empty();
            job.rnet_passed = Some(passed);
            if more {
                return Ok(None);
            }
        }
        let cands = job.rnet_passed.take().unwrap_or_default();
        let mut dets = self.stage3(&job.img, cands, self.config.thresholds[2])?;
        // facenet-pytorch's `select_largest`: largest box first.
        dets.sort_by(|a, b| b.area().total_cmp(&a.area()));
        if let Some((sx, sy)) = job.back {
            for d in &mut dets {
                d.bbox = [
                    d.bbox[0] * sx,
                    d.bbox[1] * sy,
                    d.bbox[2] * sx,
                    d.bbox[3] * sy,
                ];
                for p in &mut d.landmarks {
                    *p = [p[0] * sx, p[1] * sy];
                }
            }
        }
        Ok(Some(dets))
    }

    /// Re-locates faces near the boxes of `previous` detections (the last
    /// frame's) with the refinement stage alone: each box, squared, is one
    /// O-Net candidate, which gives the new box, score and five landmarks.
    /// No pyramid, no P-Net or R-Net: the cost is one 48x48 O-Net pass per
    /// face plus one read of the pixels under each box. A
    /// face whose score falls to O-Net's threshold or below is not returned
    /// (hand it back to [`Detector::detect`]). Largest first, as `detect`.
    pub fn refine(
        &self,
        frame: &Frame,
        previous: &[Detection],
    ) -> Result<Vec<Detection>, PerceptionError> {
        let (fw, fh) = (frame.width(), frame.height());
        // Each candidate with the frame region its crop reads (clipped as
        // `pad` clips it); boxes wholly outside the frame are dropped.
        let (cands, regions): (Vec<Cand>, Vec<_>) = previous
            .iter()
            .filter(|d| d.bbox.iter().all(|v| v.is_finite()))
            .filter_map(|d| {
                let c = rerec(Cand {
                    b: d.bbox,
                    score: d.score,
                    reg: [0.0; 4],
                });
                pad(&c.b, fw, fh).map(|r| (c, r))
            })
            .unzip();
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        const CROP: usize = 3 * 48 * 48;
        let mut data = vec![0f32; cands.len() * CROP];
        for (region, out) in regions.into_iter().zip(data.chunks_exact_mut(CROP)) {
            area_crop(frame, region, 48, out);
        }
        let mut dets = self.onet(cands, data, self.config.thresholds[2])?;
        dets.sort_by(|a, b| b.area().total_cmp(&a.area()));
        Ok(dets)
    }

    /// Pyramid scales, computed in double precision as facenet-pytorch does.
    fn scales(&self, w: usize, h: usize) -> Vec<f64> {
        let m = 12.0 / f64::from(self.config.min_face_size);
        let mut minl = w.min(h) as f64 * m;
        let mut scale = m;
        let factor = self.config.scale_factor;
        let mut out = Vec::new();
        while minl >= 12.0 {
            out.push(scale);
            scale *= factor;
            minl *= factor;
        }
        out
    }

    /// P-Net on one pyramid level: its candidates after the level's NMS.
    fn pnet_level(
        &self,
        img: &Planes,
        scale: f64,
        threshold: f32,
    ) -> Result<Vec<Cand>, PerceptionError> {
        let hs = (img.h as f64 * scale + 1.0) as usize;
        let ws = (img.w as f64 * scale + 1.0) as usize;
        let mut data = vec![0f32; 3 * hs * ws];
        img.resize_into((0, 0, img.w, img.h), hs, ws, true, &mut data);
        let (face, reg, oh, ow) = self.run_pnet(data, (hs, ws))?;
        let scale32 = scale as f32;
        let mut found = Vec::new();
        for y in 0..oh {
            for x in 0..ow {
                let i = y * ow + x;
                if face[i] >= threshold {
                    let (bx, by) = (x as f32, y as f32);
                    found.push(Cand {
                        b: [
                            ((2.0 * bx + 1.0) / scale32).floor(),
                            ((2.0 * by + 1.0) / scale32).floor(),
                            ((2.0 * bx + 12.0) / scale32).floor(),
                            ((2.0 * by + 12.0) / scale32).floor(),
                        ],
                        score: face[i],
                        reg: [
                            reg[i],
                            reg[oh * ow + i],
                            reg[2 * oh * ow + i],
                            reg[3 * oh * ow + i],
                        ],
                    });
                }
            }
        }
        Ok(nms(&found, 0.5, false)
            .into_iter()
            .map(|k| found[k])
            .collect())
    }

    /// Crops each candidate (clipped to the image, as facenet-pytorch's `pad`)
    /// and resizes it to `side`; candidates with an empty crop are dropped.
    fn crops(&self, img: &Planes, cands: Vec<Cand>, side: usize) -> (Vec<Cand>, Vec<f32>) {
        let mut kept = Vec::with_capacity(cands.len());
        let mut data = Vec::with_capacity(cands.len() * 3 * side * side);
        let mut out = vec![0f32; 3 * side * side];
        for c in cands {
            let Some(region) = pad(&c.b, img.w, img.h) else {
                continue;
            };
            img.resize_into(region, side, side, true, &mut out);
            data.extend_from_slice(&out);
            kept.push(c);
        }
        (kept, data)
    }

    fn stage2(
        &self,
        img: &Planes,
        cands: Vec<Cand>,
        threshold: f32,
    ) -> Result<Vec<Cand>, PerceptionError> {
        let (cands, data) = self.crops(img, cands, 24);
        if cands.is_empty() {
            return Ok(cands);
        }
        let out = self.run_refiner(data, cands.len(), 24)?;
        let passed: Vec<Cand> = cands
            .iter()
            .zip(out.reg.chunks_exact(4).zip(&out.prob))
            .filter(|(_, (_, p))| **p > threshold)
            .map(|(c, (r, p))| Cand {
                b: c.b,
                score: *p,
                reg: [r[0], r[1], r[2], r[3]],
            })
            .collect();
        let keep = nms(&passed, 0.7, false);
        Ok(keep.into_iter().map(|k| rerec(bbreg(passed[k]))).collect())
    }

    fn stage3(
        &self,
        img: &Planes,
        cands: Vec<Cand>,
        threshold: f32,
    ) -> Result<Vec<Detection>, PerceptionError> {
        let (cands, data) = self.crops(img, cands, 48);
        self.onet(cands, data, threshold)
    }

    /// O-Net on the 48x48 crops `data` of `cands`: the faces above
    /// `threshold`, after NMS.
    fn onet(
        &self,
        cands: Vec<Cand>,
        data: Vec<f32>,
        threshold: f32,
    ) -> Result<Vec<Detection>, PerceptionError> {
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.run_refiner(data, cands.len(), 48)?;
        let mut passed = Vec::new();
        let mut points = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            let score = out.prob[i];
            if score <= threshold {
                continue;
            }
            let (w, h) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let l = &out.landmarks[i * 10..][..10];
            let mut p = [[0f32; 2]; 5];
            for (k, pk) in p.iter_mut().enumerate() {
                *pk = [w * l[k] + c.b[0] - 1.0, h * l[5 + k] + c.b[1] - 1.0];
            }
            points.push(p);
            let r = &out.reg[i * 4..][..4];
            passed.push(bbreg(Cand {
                b: c.b,
                score,
                reg: [r[0], r[1], r[2], r[3]],
            }));
        }
        Ok(nms(&passed, 0.7, true)
            .into_iter()
            .map(|k| Detection {
                bbox: passed[k].b,
                score: passed[k].score,
                landmarks: points[k],
            })
            .collect())
    }
}

/// The pyramid's candidates of all levels: NMS across levels, then P-Net's
/// box regression, squared.
fn merge_levels(all: Vec<Cand>) -> Vec<Cand> {
    let keep = nms(&all, 0.7, false);
    keep.into_iter()
        .map(|k| {
            let c = all[k];
            let (w, h) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
            rerec(Cand {
                b: [
                    c.b[0] + c.reg[0] * w,
                    c.b[1] + c.reg[1] * h,
                    c.b[2] + c.reg[2] * w,
                    c.b[3] + c.reg[3] * h,
                ],
                ..c
            })
        })
        .collect()
}

/// The overlap NMS uses, exactly as facenet-pytorch computes it (`plus_one`:
/// pixel-inclusive areas as in its numpy NMS; `min`: over the smaller area,
/// its "Min" method; neither: torchvision's IoU, areas not clamped).
fn iou(a: &[f32; 4], b: &[f32; 4], plus_one: f32, min: bool) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0] + plus_one) * (r[3] - r[1] + plus_one);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + plus_one).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + plus_one).max(0.0);
    let inter = w * h;
    let denom = if min {
        area(a).min(area(b))
    } else {
        area(a) + area(b) - inter
    };
    if denom > 0.0 { inter / denom } else { 0.0 }
}

/// Greedy non-maximum suppression: indices kept, best score first. Without
/// `min_method` it is torchvision's `nms` (suppress IoU > threshold); with it,
/// facenet-pytorch's numpy "Min" variant (pixel-inclusive areas, overlap over
/// the smaller box, keep overlap <= threshold).
fn nms(cands: &[Cand], threshold: f32, min_method: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score));
    let mut keep = Vec::new();
    let mut removed = vec![false; cands.len()];
    for (pos, &i) in order.iter().enumerate() {
        if removed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[pos + 1..] {
            if removed[j] {
                continue;
            }
            let o = if min_method {
                iou(&cands[i].b, &cands[j].b, 1.0, true)
            } else {
                iou(&cands[i].b, &cands[j].b, 0.0, false)
            };
            if o > threshold {
                removed[j] = true;
            }
        }
    }
    keep
}

/// Squares a box around its centre (side = the longer side).
fn rerec(mut c: Cand) -> Cand {
    let (w, h) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
    let l = w.max(h);
    c.b[0] = c.b[0] + w * 0.5 - l * 0.5;
    c.b[1] = c.b[1] + h * 0.5 - l * 0.5;
    c.b[2] = c.b[0] + l;
    c.b[3] = c.b[1] + l;
    c
}

/// Applies a candidate's regression with pixel-inclusive widths.
fn bbreg(mut c: Cand) -> Cand {
    let (w, h) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
    c.b = [
        c.b[0] + c.reg[0] * w,
        c.b[1] + c.reg[1] * h,
        c.b[2] + c.reg[2] * w,
        c.b[3] + c.reg[3] * h,
    ];
    c
}

/// facenet-pytorch's `pad`: the box truncated to integers and clipped to the
/// image, as the pixel range `x - 1 .. ex, y - 1 .. ey`; `None` when empty.
fn pad(b: &[f32; 4], w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    let t = |v: f32| v.trunc().clamp(i32::MIN as f32, i32::MAX as f32) as i64;
    let x = t(b[0]).max(1);
    let y = t(b[1]).max(1);
    let ex = t(b[2]).min(w as i64);
    let ey = t(b[3]).min(h as i64);
    if ex > x - 1 && ey > y - 1 {
        Some(((x - 1) as usize, (y - 1) as usize, ex as usize, ey as usize))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Cand {
        Cand {
            b,
            score,
            reg: [0.0; 4],
        }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let c = [
            cand([0., 0., 10., 10.], 0.8),
            cand([1., 1., 11., 11.], 0.9),
            cand([20., 20., 30., 30.], 0.7),
        ];
        assert_eq!(nms(&c, 0.5, false), vec![1, 2]);
        assert_eq!(nms(&c, 0.7, true), vec![1, 2]);
        // IoU of the first two is 81 / 119 = 0.68: kept at 0.7.
        assert_eq!(nms(&c, 0.7, false), vec![1, 0, 2]);
        // A box inside a bigger one: "Min" overlap is 1.
        let nested = [
            cand([0., 0., 100., 100.], 0.9),
            cand([10., 10., 20., 20.], 0.95),
        ];
        assert_eq!(nms(&nested, 0.7, true), vec![1]);
        assert_eq!(nms(&nested, 0.7, false), vec![1, 0]);
        assert!(nms(&[], 0.5, false).is_empty());
    }

    #[test]
    fn rerec_bbreg_and_pad() {
        let r = rerec(cand([10., 20., 30., 60.], 1.0));
        assert_eq!(r.b, [0., 20., 40., 60.]);
        let mut c = cand([0., 0., 9., 9.], 1.0);
        c.reg = [0.1, -0.1, 0.2, 0.0];
        assert_eq!(bbreg(c).b, [1., -1., 11., 9.]);
        assert_eq!(
            pad(&[-5.5, 2.9, 700.2, 30.0], 640, 480),
            Some((0, 1, 640, 30))
        );
        assert_eq!(pad(&[-50., -50., -10., -10.], 640, 480), None);
        assert_eq!(
            pad(&[f32::NAN, 0., 10., 10.], 640, 480),
            Some((0, 0, 10, 10))
        );
    }

    #[test]
    fn area_resampling_matches_adaptive_average_pooling() {
        // 1 x 5 row to 3 columns: windows [0,2), [1,4), [3,5).
        let f = Frame::new(5, 1, PixelFormat::Gray8, vec![0, 10, 20, 30, 40]).unwrap();
        let img = Planes::from_frame(&f);
        let mut out = vec![0f32; 3 * 3];
        img.resize_into((0, 0, 5, 1), 1, 3, false, &mut out);
        assert_eq!(&out[..3], &[5.0, 20.0, 35.0]);
        // Upsampling repeats pixels.
        let mut up = vec![0f32; 3 * 2 * 10];
        img.resize_into((0, 0, 5, 1), 2, 10, false, &mut up);
        assert_eq!(&up[..10], &[0., 0., 10., 10., 20., 20., 30., 30., 40., 40.]);
        assert_eq!(&up[10..20], &up[..10]);
    }

    #[test]
    fn direct_crops_equal_the_tables_bit_for_bit() {
        let mut state = 7u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 8
        };
        for format in [PixelFormat::Rgb8, PixelFormat::Rgba8, PixelFormat::Gray8] {
            let (w, h) = (173, 129);
            let data = (0..w * h * format.channels())
                .map(|_| next() as u8)
                .collect();
            let frame = Frame::new(w, h, format, data).unwrap();
            let tables = Planes::from_frame(&frame);
            for region in [
                (0, 0, w, h),
                (5, 7, 17, 30),
                (100, 2, 173, 129),
                (40, 40, 41, 41),
            ] {
                for side in [48, 24] {
                    let (mut a, mut b) = (vec![0f32; 3 * side * side], vec![0f32; 3 * side * side]);
                    area_crop(&frame, region, side, &mut a);
                    tables.resize_into(region, side, side, true, &mut b);
                    assert_eq!(a, b, "{format:?} {region:?} {side}");
                }
            }
        }
    }

    fn golden() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/mtcnn.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn area_resampling_matches_pytorch_exactly() {
        // tools/mtcnn_reference.py: x[0,c,h,w] = (h*7 + w*13 + c*29) % 256, 37x53.
        let (h, w) = (37, 53);
        let mut rgb = vec![0u8; h * w * 3];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    rgb[(y * w + x) * 3 + c] = ((y * 7 + x * 13 + c * 29) % 256) as u8;
                }
            }
        }
        let img = Planes::from_frame(&Frame::new(w, h, PixelFormat::Rgb8, rgb).unwrap());
        let g = golden();
        for (key, oh, ow) in [("23x32", 23, 32), ("24x24", 24, 24), ("48x48", 48, 48)] {
            let want = &g["resample"][key];
            let mut out = vec![0f32; 3 * oh * ow];
            img.resize_into((0, 0, w, h), oh, ow, false, &mut out);
            for (a, b) in out.iter().zip(want["first20"].as_array().unwrap()) {
                assert!(
                    (a - b.as_f64().unwrap() as f32).abs() < 1e-3,
                    "{key}: {a} vs {b}"
                );
            }
            let sum: f64 = out.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (sum - want["sum"].as_f64().unwrap()).abs() < 0.05,
                "{key}: {sum}"
            );
            if let Some(values) = want["values"].as_array() {
                for (a, b) in out.iter().zip(values) {
                    assert!((a - b.as_f64().unwrap() as f32).abs() < 1e-3);
                }
            }
        }
    }

    #[test]
    fn scales_follow_facenet() {
        let d = Detector::new(
            Mtcnn::new_zeroed(&Device::Cpu).unwrap(),
            DetectorConfig {
                min_face_size: 20.0,
                ..Default::default()
            },
        )
        .unwrap();
        let s = d.scales(500, 375);
        // 375 * 0.6 = 225 -> 225 * 0.709^k >= 12 for k = 0..=8.
        assert_eq!(s.len(), 9);
        assert!((s[0] - 0.6).abs() < 1e-12 && (s[1] - 0.6 * 0.709).abs() < 1e-12);
        assert!(d.scales(11, 400).is_empty());
        assert!(d.scales(1, 1).is_empty());
    }

    #[test]
    fn bad_settings_are_refused() {
        let nets = Mtcnn::new_zeroed(&Device::Cpu).unwrap();
        for cfg in [
            DetectorConfig {
                min_face_size: 5.0,
                ..Default::default()
            },
            DetectorConfig {
                scale_factor: 1.0,
                ..Default::default()
            },
            DetectorConfig {
                thresholds: [0.5, f32::NAN, 0.5],
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Detector::new(nets.clone(), cfg),
                Err(PerceptionError::Config(_))
            ));
        }
    }
}
