//! The whole path from a frame to per-face emotions: detect, align, classify.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::crop::face_crop;
use crate::detect::{Detection, DetectionJob, Detector, DetectorConfig};
use crate::frame::Frame;
use crate::quality::FaceQuality;
use crate::{Classifier, GrayCrop, PerceptionError};

/// Pipeline settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Face detector settings (minimum face size, thresholds, ...).
    pub detector: DetectorConfig,
    /// At most this many faces are classified per frame, the largest first.
    pub max_faces: usize,
    /// Test-time augmentation of the classifier.
    pub tta: crate::Tta,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            detector: DetectorConfig::default(),
            max_faces: 8,
            tta: crate::Tta::None,
        }
    }
}

/// One face found in a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// Box, score and landmarks in the frame's pixels.
    pub detection: Detection,
    /// The aligned 48x48 gray crop the classifier saw.
    pub crop: GrayCrop,
    /// Class probabilities, in the classifier's class order.
    pub probs: Vec<f32>,
    /// What was measured of the face and of the classifier's answer.
    pub quality: FaceQuality,
}

/// Everything one frame gave: the classified faces, and the faces that were
/// detected but could not be classified (degenerate landmarks), each with
/// its reason. One bad face never costs the others.
#[derive(Debug, Default)]
pub struct FrameFaces {
    /// Classified faces, largest first.
    pub faces: Vec<Face>,
    /// Detected faces that could not be aligned, and why.
    pub failed: Vec<(Detection, PerceptionError)>,
}

impl Face {
    /// Index of the most probable class.
    pub fn label(&self) -> usize {
        crate::argmax(&self.probs)
    }

    /// Probability of the most probable class.
    pub fn confidence(&self) -> f32 {
        self.probs.get(self.label()).copied().unwrap_or(0.0)
    }
}

/// Detector + aligner + classifier. `Send + Sync`, no global state: share one
/// behind an `Arc` or clone it (the weights are reference-counted).
#[derive(Debug, Clone)]
pub struct Pipeline {
    detector: Detector,
    classifier: Classifier,
    max_faces: usize,
}

impl Pipeline {
    /// Builds a pipeline from loaded parts.
    pub fn new(detector: Detector, classifier: Classifier, max_faces: usize) -> Self {
        Self {
            detector,
            classifier,
            max_faces,
        }
    }

    /// Loads the detector (`mtcnn.safetensors`) and classifier weights files.
    pub fn from_files(
        detector: impl AsRef<Path>,
        classifier: impl AsRef<Path>,
        config: PipelineConfig,
    ) -> Result<Self, PerceptionError> {
        Ok(Self::new(
            Detector::from_file(detector, config.detector)?,
            Classifier::from_file(classifier)?.with_tta(config.tta),
            config.max_faces,
        ))
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The classifier.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Changes the settings.
    pub fn set_config(&mut self, config: PipelineConfig) -> Result<(), PerceptionError> {
        self.detector.set_config(config.detector)?;
        self.max_faces = config.max_faces;
        self.classifier.set_tta(config.tta);
        Ok(())
    }

    /// The faces in `frame`, largest first, at most `max_faces`, each aligned
    /// and classified (all crops in one batch). Faces that cannot be aligned
    /// are left out ([`Pipeline::process_all`] reports them).
    pub fn process(&self, frame: &Frame) -> Result<Vec<Face>, PerceptionError> {
        Ok(self.process_all(frame)?.faces)
    }

    /// Like [`Pipeline::process`], with the faces that were detected but
    /// could not be aligned listed beside the classified ones. Errors are
    /// only frame-wide failures (detection, classification).
    pub fn process_all(&self, frame: &Frame) -> Result<FrameFaces, PerceptionError> {
        let dets = self.detector.detect(frame)?;
        self.classify_detections(frame, dets)
    }

    /// Aligns and classifies faces already found in `frame` (at most
    /// `max_faces`, in the given order).
    pub fn classify_detections(
        &self,
        frame: &Frame,
        mut dets: Vec<Detection>,
    ) -> Result<FrameFaces, PerceptionError> {
        dets.truncate(self.max_faces);
        let mut out = FrameFaces::default();
        let mut kept = Vec::with_capacity(dets.len());
        let mut crops = Vec::with_capacity(dets.len());
        for d in dets {
            match face_crop(frame, &d.landmarks) {
                Ok(c) => {
                    crops.push(c);
                    kept.push(d);
                }
                Err(e) => out.failed.push((d, e)),
            }
        }
        let probs = self.classifier.classify(&crops)?;
        out.faces = kept
            .into_iter()
            .zip(crops)
            .zip(probs)
            .map(|((detection, crop), probs)| Face {
                quality: FaceQuality::measure(&detection, &crop, &probs),
                detection,
                crop,
                probs,
            })
            .collect();
        Ok(out)
    }
}

/// When [`FaceFollower`] runs the full detector.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct FollowConfig {
    /// Run the full detector at least every this many frames, to find faces
    /// that entered (1: every frame, i.e. no following).
    pub detect_every: u32,
    /// And at least this often in time, whichever comes first (a slow
    /// source, e.g. 5 frames/s, then still looks for new faces every
    /// second); `None`: by frames only. Time is the `now` given to
    /// [`FaceFollower::process_at`] (the frame's capture instant in the
    /// plugin), or the clock at [`FaceFollower::process`].
    pub detect_after: Option<Duration>,
    /// Spread the periodic detection over the time between frames: it
    /// starts on a due frame as a [`DetectionJob`] that
    /// [`FaceFollower::work`] advances a slice at a time, and the faces it
    /// finds join a later frame. No frame then waits for the whole pyramid.
    /// A caller that never calls `work` still gets the detection: it is
    /// finished in one go once it is `detect_every` frames old. Off: the
    /// due frame runs the whole detector itself.
    pub background_detection: bool,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            detect_every: 15,
            detect_after: Some(Duration::from_secs(1)),
            background_detection: true,
        }
    }
}

/// Followed and detected faces overlapping at least this much are the same face.
const SAME_FACE_IOU: f32 = 0.3;

/// Follows faces through a video instead of detecting them in every frame,
/// as MediaPipe's face pipeline does: the full MTCNN detector runs on the
/// first frame and whenever a followed face is lost; in between, each face
/// is re-located from its previous box by O-Net alone
/// ([`Detector::refine`]). Every [`FollowConfig::detect_every`] frames a
/// detection looks for new faces, in the background between frames
/// ([`FollowConfig::background_detection`], advanced by
/// [`FaceFollower::work`]) or on the due frame.
#[derive(Debug, Default)]
pub struct FaceFollower {
    /// Settings.
    pub config: FollowConfig,
    last: Vec<Detection>,
    since_detect: u32,
    /// When the last detection ran or started.
    detected_at: Option<Instant>,
    job: Option<DetectionJob>,
}

impl FaceFollower {
    /// A follower that starts with a full detection.
    pub fn new(config: FollowConfig) -> Self {
        Self {
            config,
            last: Vec::new(),
            since_detect: 0,
            detected_at: None,
            job: None,
        }
    }

    /// Whether a whole period (frames or time) has passed since the last
    /// detection, counting the frame at `now` when `this_frame`.
    fn period_over(&self, now: Instant, this_frame: bool) -> bool {
        let frames = self.since_detect + u32::from(this_frame);
        frames >= self.config.detect_every.max(1)
            || self.config.detect_after.is_some_and(|period| {
                self.detected_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= period)
            })
    }

    /// Forgets the followed faces: the next frame runs the detector.
    pub fn reset(&mut self) {
        self.last.clear();
        self.job = None;
    }

    /// Whether a background detection waits for [`FaceFollower::work`].
    pub fn has_work(&self) -> bool {
        self.job.as_ref().is_some_and(|j| !j.is_done())
    }

    /// Advances the background detection by one slice (a few milliseconds:
    /// see [`Detector::step_detection`]); call it while no frame is waiting.
    /// Returns whether work remains. A failed slice drops the detection (the
    /// next due frame starts another) and returns the error.
    pub fn work(&mut self, pipeline: &Pipeline) -> Result<bool, PerceptionError> {
        let Some(job) = self.job.as_mut().filter(|j| !j.is_done()) else {
            return Ok(false);
        };
        match pipeline.detector().step_detection(job) {
            Ok(done) => Ok(!done),
            Err(e) => {
                self.job = None;
                Err(e)
            }
        }
    }

    /// The faces of the next video frame, and whether the full detector ran
    /// on it ([`FaceFollower::process_at`] with the clock now).
    pub fn process(
        &mut self,
        pipeline: &Pipeline,
        frame: &Frame,
    ) -> Result<(FrameFaces, bool), PerceptionError> {
        self.process_at(pipeline, frame, Instant::now())
    }

    /// The faces of the next video frame, captured at `now`, and whether
    /// the full detector ran on it.
    pub fn process_at(
        &mut self,
        pipeline: &Pipeline,
        frame: &Frame,
        now: Instant,
    ) -> Result<(FrameFaces, bool), PerceptionError> {
        let every = self.config.detect_every.max(1);
        // The whole detector runs on this frame when nothing is followed, or
        // when the periodic detection is due and is not run in the background.
        let in_background = self.config.background_detection && every > 1;
        let detect_now = self.last.is_empty() || (!in_background && self.period_over(now, true));
        if !detect_now {
            let refined = pipeline.detector().refine(frame, &self.last)?;
            // Every face still there: classify them. A face lost goes back
            // to the detector (which may find it elsewhere).
            if refined.len() == self.last.len() {
                self.since_detect += 1;
                let (faces, ran) = self.background(pipeline, frame, refined, now)?;
                self.last = faces.clone();
                return Ok((pipeline.classify_detections(frame, faces)?, ran));
            }
        }
        self.job = None;
        let mut dets = pipeline.detector().detect(frame)?;
        dets.truncate(pipeline.max_faces);
        self.since_detect = 0;
        self.detected_at = Some(now);
        self.last = dets.clone();
        Ok((pipeline.classify_detections(frame, dets)?, true))
    }

    /// The background detection's part of a followed frame: finishes a job
    /// the caller left unworked for a whole period, merges a finished one
    /// into the followed `faces`, and starts the next when it is due.
    /// Returns the faces and whether the detector ran on this frame.
    fn background(
        &mut self,
        pipeline: &Pipeline,
        frame: &Frame,
        mut faces: Vec<Detection>,
        now: Instant,
    ) -> Result<(Vec<Detection>, bool), PerceptionError> {
        if !self.config.background_detection {
            return Ok((faces, false));
        }
        let mut ran = false;
        // A whole period since the last detection started (`since_detect`
        // already counts this frame): finish a job left unworked, or start
        // the next one.
        let overdue = self.period_over(now, false);
        if let Some(job) = self.job.as_mut()
            && !job.is_done()
            && overdue
        {
            while !pipeline.detector().step_detection(job)? {}
            ran = true;
        }
        if let Some(found) = self.job.as_mut().and_then(DetectionJob::take_result) {
            self.job = None;
            faces = self.merge(pipeline, frame, faces, found)?;
        }
        if self.job.is_none() && overdue {
            self.job = Some(pipeline.detector().start_detection(frame)?);
            self.since_detect = 0;
            self.detected_at = Some(now);
        }
        Ok((faces, ran))
    }

    /// Joins a finished background detection (of an earlier frame) with the
    /// faces followed into `frame`: a detected face that overlaps a followed
    /// one is that face (the followed box is the newer); a new one is
    /// re-located into `frame` by O-Net; a followed face the detector did
    /// not find is dropped, as a detection on the frame would drop it.
    fn merge(
        &self,
        pipeline: &Pipeline,
        frame: &Frame,
        followed: Vec<Detection>,
        found: Vec<Detection>,
    ) -> Result<Vec<Detection>, PerceptionError> {
        let same = |a: &Detection, b: &Detection| a.iou(&b.bbox) >= SAME_FACE_IOU;
        let mut faces: Vec<Detection> = followed
            .into_iter()
            .filter(|f| found.iter().any(|d| same(f, d)))
            .collect();
        let new: Vec<Detection> = found
            .into_iter()
            .filter(|d| !faces.iter().any(|f| same(f, d)))
            .collect();
        if !new.is_empty() {
            for n in pipeline.detector().refine(frame, &new)? {
                if !faces.iter().any(|f| same(f, &n)) {
                    faces.push(n);
                }
            }
        }
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        faces.truncate(pipeline.max_faces);
        Ok(faces)
    }
}
