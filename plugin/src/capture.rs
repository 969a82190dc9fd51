//! The capture stage ([`EmotionSystems::Capture`]): frame sources and the
//! system that takes the newest frame from the active one.
//!
//! Sources: the webcam (nokhwa, on its own thread; Cargo feature `webcam`,
//! on by default), still images or a folder of images played at a rate, and
//! frames pushed by the app ([`FramePusher`]). All behind [`FrameSource`], so
//! tests and demos run without a camera. The stage's output is the
//! [`LatestFrame`] resource; its state for the player is [`CameraStatus`].

use std::path::PathBuf;
#[cfg(feature = "webcam")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use perception::Frame;

use crate::settings::{EmotionSystems, stage_setup};

/// What a source has for the capture system right now.
#[derive(Debug)]
pub enum SourcePoll {
    /// A frame newer than the last one returned (delivered now, as far as
    /// latency is concerned).
    Frame(Frame),
    /// A frame and when it was delivered (by the camera, before decoding; by
    /// the app, when pushed): latency is counted from `at`.
    Delivered {
        /// The frame.
        frame: Frame,
        /// When it arrived.
        at: Instant,
    },
    /// Nothing new yet (starting, or between frames).
    Pending,
    /// Running, with nothing to hand over as a frame: a source that feeds
    /// the pipeline's results directly (a replayed perception stream).
    Alive,
    /// The source failed (no camera, permission denied, camera unplugged,
    /// unreadable images): the capture system stops it and retries later.
    Failed(String),
}

impl SourcePoll {
    /// A frame and when it arrived (now, for [`SourcePoll::Frame`]), or the
    /// poll as it was.
    pub fn into_delivered(self) -> Result<(Frame, Instant), Self> {
        match self {
            Self::Frame(frame) => Ok((frame, Instant::now())),
            Self::Delivered { frame, at } => Ok((frame, at)),
            other => Err(other),
        }
    }
}

/// A producer of frames. Implementations never block: `start` returns at once
/// (slow work goes to a thread) and `poll` only looks at what is ready.
pub trait FrameSource: Send + Sync + 'static {
    /// Starts producing frames.
    fn start(&mut self);
    /// Stops producing frames and releases any device.
    fn stop(&mut self);
    /// The newest frame since the last call, if any; `now` is the app's time in
    /// seconds (image sources pace themselves with it).
    fn poll(&mut self, now: f64) -> SourcePoll;
    /// A short description for logs and the camera status.
    fn describe(&self) -> String;
    /// The time between frames this source means to deliver, seconds, if it
    /// has one (the watchdog then waits twice that, at least a second,
    /// before it calls the source stalled).
    fn frame_period(&self) -> Option<f64> {
        None
    }
    /// Hands the source the plugin's [`FrameDemand`] (called once after it
    /// is made): a source that can skip work on frames nobody will use
    /// reads it. The default ignores it.
    fn set_demand(&mut self, _demand: FrameDemand) {}
}

/// When the plugin will next take a frame, set by the inference stage every
/// update and read by the camera thread as each frame arrives: a frame that
/// a newer one will replace before then is dropped undecoded. Until the
/// inference stage says otherwise every frame is wanted.
#[derive(Resource, Debug, Clone)]
pub struct FrameDemand(Arc<DemandInner>);

#[derive(Debug)]
struct DemandInner {
    base: Instant,
    /// Nanoseconds after `base` when the next frame is taken; 0: always.
    next_take: std::sync::atomic::AtomicU64,
}

impl Default for FrameDemand {
    fn default() -> Self {
        Self(Arc::new(DemandInner {
            base: Instant::now(),
            next_take: std::sync::atomic::AtomicU64::new(0),
        }))
    }
}

impl FrameDemand {
    /// Says when the next frame will be taken (`None`: every frame is
    /// wanted).
    pub fn set_next_take(&self, at: Option<Instant>) {
        let ns = at.map_or(0, |t| {
            u64::try_from(t.saturating_duration_since(self.0.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.0.next_take.store(ns, Ordering::Relaxed);
    }

    /// Whether a frame arriving at `now`, from a source delivering one every
    /// `period`, will be taken: it will, unless the next frame (expected
    /// after 80% of a period, allowing for jitter) still comes before the
    /// take.
    pub fn wanted(&self, now: Instant, period: Duration) -> bool {
        let take = self.0.next_take.load(Ordering::Relaxed);
        if take == 0 {
            return true;
        }
        let next_frame = now.saturating_duration_since(self.0.base) + period.mul_f64(0.8);
        u64::try_from(next_frame.as_nanos()).unwrap_or(u64::MAX) >= take
    }
}

/// Which frame source the capture stage runs (a runtime setting: changing it
/// in [`EmotionSettings`](crate::EmotionSettings) swaps the source).
#[derive(Debug, Clone, PartialEq, Reflect)]
pub enum SourceKind {
    /// The webcam, through nokhwa (without the `webcam` feature, a source
    /// that reports it is unavailable).
    Webcam(WebcamConfig),
    /// One still image, shown repeatedly.
    Image(PathBuf),
    /// The images of a folder (sorted by name), each shown for `1 / fps`
    /// seconds, looping.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Images per second.
        fps: f32,
    },
    /// Frames the app hands to [`FramePusher`].
    Pushed,
    /// The game's own source (a video file, a network stream, a render
    /// target): [`CustomSource`] makes a fresh [`FrameSource`] each time
    /// capture (re)starts.
    Custom(#[reflect(ignore)] CustomSource),
    /// A recorded perception stream (`crate::record`), played back through
    /// the tracker, calibration and events without any frame or network.
    Replay {
        /// The JSON Lines file the recorder wrote.
        path: PathBuf,
        /// At the recorded pace (true) or one recorded frame per update.
        realtime: bool,
    },
}

impl Default for SourceKind {
    fn default() -> Self {
        Self::Webcam(WebcamConfig::default())
    }
}

impl SourceKind {
    /// Whether consecutive frames show the same scene moving (a camera, a
    /// video, pushed or custom frames), so that faces can be followed from
    /// frame to frame ([`EmotionSettings::follow`](crate::EmotionSettings::follow)).
    /// A still image and a slideshow of unrelated photos are detected whole
    /// every frame.
    pub fn is_video(&self) -> bool {
        !matches!(self, Self::Image(_) | Self::Folder { .. })
    }
}

/// A factory of the game's own [`FrameSource`]s, for
/// [`SourceKind::Custom`]. Two are equal when they are the same factory.
///
/// ```
/// # use bevy_emotion::prelude::*;
/// # use bevy_emotion::capture::CustomSource;
/// struct Synthetic;
/// impl FrameSource for Synthetic {
///     fn start(&mut self) {}
///     fn stop(&mut self) {}
///     fn poll(&mut self, _now: f64) -> SourcePoll {
///         let frame = perception::Frame::new(64, 48, perception::PixelFormat::Gray8, vec![90; 64 * 48]);
///         frame.map_or_else(|e| SourcePoll::Failed(e.to_string()), SourcePoll::Frame)
///     }
///     fn describe(&self) -> String {
///         "a synthetic gray frame".into()
///     }
/// }
/// let source = SourceKind::Custom(CustomSource::new(|| Box::new(Synthetic)));
/// ```
#[derive(Clone)]
pub struct CustomSource(Arc<dyn Fn() -> Box<dyn FrameSource> + Send + Sync>);

impl CustomSource {
    /// Wraps a factory.
    pub fn new(make: impl Fn() -> Box<dyn FrameSource> + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }
}

impl Default for CustomSource {
    /// A source that reports it was never configured.
    fn default() -> Self {
        Self::new(|| Box::new(Unconfigured))
    }
}

impl PartialEq for CustomSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for CustomSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomSource")
    }
}

/// What [`CustomSource::default`] makes.
struct Unconfigured;

impl FrameSource for Unconfigured {
    fn start(&mut self) {}

    fn stop(&mut self) {}

    fn poll(&mut self, _now: f64) -> SourcePoll {
        SourcePoll::Failed("no custom source was configured".into())
    }

    fn describe(&self) -> String {
        "unconfigured custom source".into()
    }
}

/// Webcam settings.
#[derive(Debug, Clone, PartialEq, Eq, Reflect)]
pub struct WebcamConfig {
    /// Device index (0: the system's first camera).
    pub index: u32,
    /// Requested width (the closest mode the camera offers is used).
    pub width: u32,
    /// Requested height.
    pub height: u32,
    /// Requested frame rate.
    pub fps: u32,
}

impl Default for WebcamConfig {
    fn default() -> Self {
        Self {
            index: 0,
            width: 640,
            height: 480,
            fps: 30,
        }
    }
}

/// A one-slot mailbox: a newer frame replaces an unread older one, so the
/// consumer always gets the latest frame and stale ones are dropped.
#[derive(Debug, Default)]
struct Slot {
    frame: Mutex<Option<(Frame, Instant)>>,
    /// Frames the camera delivered but nobody wanted (dropped undecoded):
    /// proof of life for the watchdog.
    #[cfg_attr(
        not(feature = "webcam"),
        expect(dead_code, reason = "only the webcam skips frames")
    )]
    skipped: std::sync::atomic::AtomicU64,
    #[cfg_attr(
        not(feature = "webcam"),
        expect(dead_code, reason = "only the webcam fails")
    )]
    failure: Mutex<Option<String>>,
}

impl Slot {
    /// Leaves `frame`, delivered at `at`, replacing any unread one.
    fn put(&self, frame: Frame, at: Instant) {
        *self.frame.lock().unwrap_or_else(PoisonError::into_inner) = Some((frame, at));
    }

    fn take(&self) -> Option<(Frame, Instant)> {
        self.frame
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    #[cfg(feature = "webcam")]
    fn fail(&self, reason: String) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    #[cfg(feature = "webcam")]
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Hands frames to the plugin from app code (a render target, a video
/// decoder, a test). The newest frame wins; a frame not yet picked up when
/// the next one arrives is dropped.
#[derive(Resource, Debug, Clone, Default)]
pub struct FramePusher(Arc<Slot>);

impl FramePusher {
    /// Queues `frame` (replacing any frame not yet captured); latency is
    /// counted from this call.
    pub fn push(&self, frame: Frame) {
        self.0.put(frame, Instant::now());
    }
}

/// [`SourceKind::Pushed`].
pub struct PushedSource {
    slot: Arc<Slot>,
}

impl PushedSource {
    /// A source reading what `pusher` receives.
    pub fn new(pusher: &FramePusher) -> Self {
        Self {
            slot: pusher.0.clone(),
        }
    }
}

impl FrameSource for PushedSource {
    fn start(&mut self) {}

    fn stop(&mut self) {
        self.slot.take();
    }

    fn poll(&mut self, _now: f64) -> SourcePoll {
        self.slot
            .take()
            .map_or(SourcePoll::Pending, |(frame, at)| SourcePoll::Delivered {
                frame,
                at,
            })
    }

    fn describe(&self) -> String {
        "frames pushed by the app".into()
    }
}

/// [`SourceKind::Image`] and [`SourceKind::Folder`]: images decoded once on a
/// background thread, then replayed from memory.
pub struct ImageSource {
    files: Vec<PathBuf>,
    fps: f32,
    what: String,
    loaded: Arc<Mutex<Option<Result<Vec<Frame>, String>>>>,
    loader: Option<JoinHandle<()>>,
    next: usize,
    next_at: f64,
}

impl ImageSource {
    /// One still image, offered `fps` times per second.
    pub fn still(path: PathBuf, fps: f32) -> Self {
        let what = format!("image {}", path.display());
        Self::new(vec![path], fps, what)
    }

    /// The PNG and JPEG files of `dir`, in name order, `fps` per second.
    pub fn folder(dir: PathBuf, fps: f32) -> Self {
        let what = format!("images in {}", dir.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        Self::new(files, fps, what)
    }

    fn new(files: Vec<PathBuf>, fps: f32, what: String) -> Self {
        Self {
            files,
            fps: if fps.is_finite() && fps > 0.0 {
                fps
            } else {
                1.0
            },
            what,
            loaded: Arc::default(),
            loader: None,
            next: 0,
            next_at: f64::NEG_INFINITY,
        }
    }
}

impl FrameSource for ImageSource {
    fn start(&mut self) {
        if self.loader.is_some() {
            return;
        }
        // `stop` gave this source a fresh slot: a loader of an earlier start
        // that is still decoding writes into its own (orphaned) one.
        let files = self.files.clone();
        let out = self.loaded.clone();
        let what = self.what.clone();
        self.loader = Some(std::thread::spawn(move || {
            let result = if files.is_empty() {
                Err(format!("no PNG or JPEG files: {what}"))
            } else {
                let mut frames = Vec::new();
                let mut errors = Vec::new();
                for f in &files {
                    match Frame::open(f) {
                        Ok(fr) => frames.push(fr),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                for e in &errors {
                    bevy::log::warn!("skipping {e}");
                }
                if frames.is_empty() {
                    Err(format!("no readable image: {what}"))
                } else {
                    Ok(frames)
                }
            };
            *out.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        }));
    }

    fn stop(&mut self) {
        // Frames are in memory only; dropping them releases everything. A
        // loader still decoding finishes into its own slot, dropped with it:
        // nothing reaches this source after `stop`.
        self.loader = None;
        self.loaded = Arc::default();
        self.next = 0;
        self.next_at = f64::NEG_INFINITY;
    }

    fn poll(&mut self, now: f64) -> SourcePoll {
        let guard = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            None => SourcePoll::Pending,
            Some(Err(e)) => SourcePoll::Failed(e.clone()),
            Some(Ok(frames)) => {
                if now < self.next_at {
                    return SourcePoll::Pending;
                }
                let frame = frames[self.next % frames.len()].clone();
                self.next = (self.next + 1) % frames.len();
                let period = 1.0 / f64::from(self.fps);
                self.next_at = if self.next_at.is_finite() && now - self.next_at < period {
                    self.next_at + period
                } else {
                    now + period
                };
                SourcePoll::Frame(frame)
            }
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn frame_period(&self) -> Option<f64> {
        Some(1.0 / f64::from(self.fps))
    }
}

/// A camera as the capture thread drives it: opened on that thread, read
/// frame by frame (each call may block until the next frame), closed when the
/// source stops. [`NokhwaCamera`] is the real one; a game can wrap another
/// capture API, and the tests script camera faults with it
/// ([`WebcamSource::with_device`]). A device is made by its
/// [`CameraFactory`] on the camera thread and never leaves it, so it need
/// not be `Send` (nokhwa's camera is not).
#[cfg(feature = "webcam")]
pub trait CameraDevice {
    /// Opens the device and starts streaming.
    fn open(&mut self) -> Result<(), String>;
    /// The next frame, as the camera delivered it (MJPEG, YUYV, NV12, gray or
    /// raw RGB/BGR). An error ends this stream: the source reports
    /// [`CameraStatus::Unavailable`] and is opened again after a backoff.
    fn frame(&mut self) -> Result<nokhwa::Buffer, String>;
    /// Stops streaming and releases the device.
    fn close(&mut self);
}

/// The system camera through nokhwa.
#[cfg(feature = "webcam")]
pub struct NokhwaCamera {
    config: WebcamConfig,
    camera: Option<nokhwa::Camera>,
}

#[cfg(feature = "webcam")]
impl NokhwaCamera {
    /// The camera `config` describes (opened by [`CameraDevice::open`]).
    pub fn new(config: WebcamConfig) -> Self {
        Self {
            config,
            camera: None,
        }
    }
}

#[cfg(feature = "webcam")]
impl CameraDevice for NokhwaCamera {
    fn open(&mut self) -> Result<(), String> {
        use nokhwa::Camera;
        use nokhwa::pixel_format::RgbFormat;
        use nokhwa::utils::{
            CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
            Resolution,
        };
        let cfg = &self.config;
        let format =
            RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(CameraFormat::new(
                Resolution::new(cfg.width, cfg.height),
                FrameFormat::MJPEG,
                cfg.fps,
            )));
        let mut camera = Camera::new(CameraIndex::Index(cfg.index), format)
            .map_err(|e| format!("no camera {}: {e}", cfg.index))?;
        camera
            .open_stream()
            .map_err(|e| format!("cannot open camera {}: {e}", cfg.index))?;
        self.camera = Some(camera);
        Ok(())
    }

    fn frame(&mut self) -> Result<nokhwa::Buffer, String> {
        let index = self.config.index;
        self.camera
            .as_mut()
            .ok_or_else(|| format!("camera {index} is not open"))?
            .frame()
            .map_err(|e| format!("camera {index} stopped delivering frames: {e}"))
    }

    fn close(&mut self) {
        if let Some(mut camera) = self.camera.take() {
            let _ = camera.stop_stream();
        }
    }
}

/// Makes the [`CameraDevice`] a [`WebcamSource`] opens (a new one per attempt).
#[cfg(feature = "webcam")]
pub type CameraFactory = Arc<dyn Fn() -> Box<dyn CameraDevice> + Send + Sync>;

/// [`SourceKind::Webcam`]: a camera on a thread of its own that opens it,
/// decodes frames to RGB and leaves the newest in a one-slot mailbox.
#[cfg(feature = "webcam")]
pub struct WebcamSource {
    what: String,
    make: CameraFactory,
    slot: Arc<Slot>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    demand: FrameDemand,
    /// `slot.skipped` at the last poll.
    seen_skipped: u64,
}

#[cfg(feature = "webcam")]
impl WebcamSource {
    /// A source for the camera `config` describes (opened on `start`).
    pub fn new(config: WebcamConfig) -> Self {
        let what = format!(
            "webcam {} ({}x{} at {} fps requested)",
            config.index, config.width, config.height, config.fps
        );
        Self::with_device(
            what,
            Arc::new(move || Box::new(NokhwaCamera::new(config.clone()))),
        )
    }

    /// A source reading the devices `make` returns (one per start), described
    /// as `what`.
    pub fn with_device(what: impl Into<String>, make: CameraFactory) -> Self {
        Self {
            what: what.into(),
            make,
            slot: Arc::default(),
            stop: Arc::default(),
            thread: None,
            demand: FrameDemand::default(),
            seen_skipped: 0,
        }
    }
}

#[cfg(feature = "webcam")]
impl FrameSource for WebcamSource {
    fn start(&mut self) {
        if self.thread.is_some() {
            return;
        }
        // A fresh mailbox and stop flag per start: a thread of an earlier
        // start that has not noticed its stop yet delivers into its own
        // (orphaned) mailbox, never into this one.
        self.stop = Arc::default();
        self.slot = Arc::default();
        self.seen_skipped = 0;
        let (make, slot, stop) = (self.make.clone(), self.slot.clone(), self.stop.clone());
        let demand = self.demand.clone();
        let spawned = std::thread::Builder::new()
            .name("emotion-camera".into())
            .spawn(move || {
                // Camera backends can panic on odd devices: report it as a
                // failure instead of losing the thread silently.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut device = make();
                    let result = camera_loop(device.as_mut(), &slot, &stop, &demand);
                    // Releases the device (also when stopping on request).
                    device.close();
                    result
                }));
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => slot.fail(e),
                    Err(_) => slot.fail("the camera backend panicked".into()),
                }
            });
        match spawned {
            Ok(handle) => self.thread = Some(handle),
            Err(e) => self
                .slot
                .fail(format!("cannot start the camera thread: {e}")),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread notices within one frame and closes the device; it is
        // not joined here so that a stuck driver cannot block the app. A
        // frame it delivers meanwhile goes to the old mailbox, dropped with
        // the thread.
        self.thread = None;
        self.slot = Arc::default();
    }

    fn poll(&mut self, _now: f64) -> SourcePoll {
        if let Some((frame, at)) = self.slot.take() {
            return SourcePoll::Delivered { frame, at };
        }
        if let Some(e) = self.slot.failure() {
            self.thread = None;
            return SourcePoll::Failed(e);
        }
        // Frames dropped undecoded still show the camera is alive.
        let skipped = self.slot.skipped.load(Ordering::Relaxed);
        if skipped != self.seen_skipped {
            self.seen_skipped = skipped;
            return SourcePoll::Alive;
        }
        SourcePoll::Pending
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn set_demand(&mut self, demand: FrameDemand) {
        self.demand = demand;
    }
}

#[cfg(feature = "webcam")]
impl Drop for WebcamSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(feature = "webcam")]
fn camera_loop(
    device: &mut dyn CameraDevice,
    slot: &Slot,
    stop: &AtomicBool,
    demand: &FrameDemand,
) -> Result<(), String> {
    device.open()?;
    // The camera's frame period, as measured between frames.
    let (mut period, mut last) = (Duration::from_millis(33), None::<Instant>);
    while !stop.load(Ordering::Relaxed) {
        let buffer = device.frame()?;
        // The latency clock starts here, before decoding.
        let at = Instant::now();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(l) = last {
            period = at.saturating_duration_since(l).min(Duration::from_secs(1));
        }
        last = Some(at);
        if !demand.wanted(at, period) {
            // Inference would not take it: not worth decoding.
            slot.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match decode_camera_frame(&buffer) {
            Ok(frame) => slot.put(frame, at),
            Err(e) => bevy::log::warn!("dropping a camera frame: {e}"),
        }
    }
    Ok(())
}

/// Decodes one camera buffer to an RGB [`Frame`]. MJPEG goes through the
/// project's size-limited image decoder (so a corrupt or hostile frame is an
/// error, never a panic or a huge allocation); the uncompressed formats through
/// nokhwa's converters, after the reported size is checked.
#[cfg(feature = "webcam")]
pub fn decode_camera_frame(buffer: &nokhwa::Buffer) -> Result<Frame, String> {
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::FrameFormat;
    if buffer.source_frame_format() == FrameFormat::MJPEG {
        return Frame::decode(buffer.buffer()).map_err(|e| format!("corrupt MJPEG frame: {e}"));
    }
    let res = buffer.resolution();
    let (w, h) = (res.width_x as usize, res.height_y as usize);
    let max = perception::frame::MAX_FRAME_SIDE;
    if w == 0 || h == 0 || w > max || h > max {
        return Err(format!(
            "the camera reports an impossible frame size {w}x{h}"
        ));
    }
    let mut rgb = vec![0u8; w * h * 3];
    buffer
        .decode_image_to_buffer::<RgbFormat>(&mut rgb)
        .map_err(|e| format!("undecodable {:?} frame: {e}", buffer.source_frame_format()))?;
    Frame::new(w, h, perception::PixelFormat::Rgb8, rgb).map_err(|e| e.to_string())
}

/// What [`SourceKind::Webcam`] gives in a build without the `webcam`
/// feature: a source that fails at once, saying why.
#[cfg(not(feature = "webcam"))]
struct NoWebcam;

#[cfg(not(feature = "webcam"))]
impl FrameSource for NoWebcam {
    fn start(&mut self) {}

    fn stop(&mut self) {}

    fn poll(&mut self, _now: f64) -> SourcePoll {
        SourcePoll::Failed(
            "this build has no camera backend (bevy_emotion's `webcam` feature is off)".into(),
        )
    }

    fn describe(&self) -> String {
        "webcam (not built in)".into()
    }
}

/// Builds the source for `kind`; a replay hands its frames to `feed`.
pub fn make_source(
    kind: &SourceKind,
    pusher: &FramePusher,
    feed: &crate::record::ReplayFeed,
) -> Box<dyn FrameSource> {
    match kind {
        #[cfg(feature = "webcam")]
        SourceKind::Webcam(cfg) => Box::new(WebcamSource::new(cfg.clone())),
        #[cfg(not(feature = "webcam"))]
        SourceKind::Webcam(_) => Box::new(NoWebcam),
        SourceKind::Image(path) => Box::new(ImageSource::still(path.clone(), 10.0)),
        SourceKind::Folder { dir, fps } => Box::new(ImageSource::folder(dir.clone(), *fps)),
        SourceKind::Pushed => Box::new(PushedSource::new(pusher)),
        SourceKind::Custom(make) => (make.0)(),
        SourceKind::Replay { path, realtime } => Box::new(crate::record::ReplaySource::new(
            path.clone(),
            *realtime,
            feed.clone(),
        )),
    }
}

/// Whether the player allowed capture. Nothing is captured (no camera is
/// opened, no image read, no pushed frame taken) until the game sets it to
/// [`EmotionConsent::Granted`], typically after asking the player; setting
/// it back to [`EmotionConsent::Denied`] stops the camera thread, drops every
/// cached frame and forgets every face within one update.
#[derive(Resource, Reflect, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[reflect(Resource)]
pub enum EmotionConsent {
    /// Not asked yet, or refused (the default).
    #[default]
    Denied,
    /// The player agreed.
    Granted,
}

/// What a game shows so the player knows when they are watched: `live` is
/// true while a source is open (a camera streaming, images being read,
/// frames accepted from the app).
#[derive(Resource, Reflect, Debug, Clone, PartialEq, Eq, Default)]
#[reflect(Resource)]
pub struct CaptureIndicator {
    /// A source is open.
    pub live: bool,
    /// What it is (empty when not live).
    pub source: String,
}

/// Run condition: perception is on and the player consented.
pub fn capture_allowed(
    settings: Res<crate::EmotionSettings>,
    consent: Res<EmotionConsent>,
) -> bool {
    settings.enabled && *consent == EmotionConsent::Granted
}

/// Run condition: the opposite of [`capture_allowed`].
pub fn capture_stopped(
    settings: Res<crate::EmotionSettings>,
    consent: Res<EmotionConsent>,
) -> bool {
    !capture_allowed(settings, consent)
}

/// The camera (or other source) as the app should show it to the player.
#[derive(Resource, Reflect, Debug, Clone, PartialEq, Default)]
#[reflect(Resource)]
pub enum CameraStatus {
    /// Capture is switched off ([`EmotionSettings::enabled`](crate::EmotionSettings::enabled)).
    #[default]
    Off,
    /// The source is starting (opening the camera, decoding images).
    Starting(String),
    /// Frames are arriving.
    Running(String),
    /// The source is open but has delivered nothing for longer than the
    /// watchdog waits (a hung driver, an unplugged camera that reports no
    /// error); it goes back to `Running` when frames resume.
    Stalled(String),
    /// The source failed (no camera, permission denied, unplugged, no
    /// readable images); it is retried after `retry_in` seconds.
    Unavailable {
        /// What failed.
        reason: String,
        /// Seconds until the next attempt.
        retry_in: f32,
    },
}

/// Sent whenever [`CameraStatus`] changes.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct CameraStatusChanged(pub CameraStatus);

/// Counters, for overlays and tests. The capture stage counts frames, the
/// face stage counts processed frames and failures.
#[derive(Resource, Reflect, Debug, Clone, Default)]
#[reflect(Resource)]
pub struct EmotionStats {
    /// Frames taken from the source.
    pub frames_captured: u64,
    /// Frames run through detection and classification.
    pub frames_processed: u64,
    /// Of those, frames on which the full detector ran (the others were
    /// followed from the previous frame).
    pub full_detections: u64,
    /// Sequence number of the newest processed frame.
    pub last_processed: u64,
    /// Time from capture to results of the newest processed frame.
    pub last_latency: Duration,
    /// Inferences that failed (logged).
    pub failures: u64,
}

/// The newest captured frame (kept in memory only): the capture stage's
/// output, which the inference stage reads.
#[derive(Resource, Clone)]
pub struct LatestFrame {
    /// The frame.
    pub frame: Arc<Frame>,
    /// Sequence number, counting from 1.
    pub seq: u64,
    /// Real time (`Time<Real>`) when it was captured, seconds.
    pub time: f64,
    /// Wall-clock capture instant (for latency).
    pub instant: Instant,
}

#[derive(Resource, Default)]
struct CaptureState {
    source: Option<Box<dyn FrameSource>>,
    kind: Option<SourceKind>,
    /// When the source last delivered (or was started).
    last_delivery: f64,
    retry_at: f64,
    backoff: f32,
    seq: u64,
}

/// Owns the frame source ([`EmotionSystems::Capture`]).
pub struct EmotionCapturePlugin;

impl Plugin for EmotionCapturePlugin {
    fn build(&self, app: &mut App) {
        stage_setup(app);
        app.init_resource::<CaptureState>()
            .init_resource::<FramePusher>()
            .init_resource::<crate::record::ReplayFeed>()
            .init_resource::<CameraStatus>()
            .init_resource::<EmotionStats>()
            .init_resource::<CaptureIndicator>()
            .init_resource::<FrameDemand>()
            .register_type::<CameraStatus>()
            .register_type::<EmotionStats>()
            .register_type::<EmotionConsent>()
            .register_type::<CaptureIndicator>()
            .add_message::<CameraStatusChanged>()
            .add_systems(
                Update,
                (
                    release_source.run_if(capture_stopped),
                    capture.run_if(capture_allowed),
                )
                    .in_set(EmotionSystems::Capture),
            );
    }
}

fn set_status(
    status: &mut CameraStatus,
    new: CameraStatus,
    writer: &mut MessageWriter<CameraStatusChanged>,
) {
    if *status != new {
        match &new {
            CameraStatus::Unavailable { reason, retry_in } => {
                warn!("frame source unavailable: {reason} (retrying in {retry_in:.0} s)");
            }
            CameraStatus::Stalled(what) => warn!("frame source stalled: {what}"),
            other => debug!("frame source: {other:?}"),
        }
        *status = new.clone();
        writer.write(CameraStatusChanged(new));
    }
}

/// Capture switched off or consent revoked: stops the source (releasing the
/// device) and drops every cached frame.
fn release_source(
    mut commands: Commands,
    mut state: ResMut<CaptureState>,
    mut status: ResMut<CameraStatus>,
    mut indicator: ResMut<CaptureIndicator>,
    pusher: Res<FramePusher>,
    feed: Res<crate::record::ReplayFeed>,
    latest: Option<Res<LatestFrame>>,
    mut writer: MessageWriter<CameraStatusChanged>,
) {
    if let Some(mut s) = state.source.take() {
        s.stop();
        state.kind = None;
    }
    if latest.is_some() {
        commands.remove_resource::<LatestFrame>();
    }
    pusher.0.take();
    feed.clear();
    if indicator.live {
        *indicator = CaptureIndicator::default();
    }
    set_status(&mut status, CameraStatus::Off, &mut writer);
}

fn capture(
    mut commands: Commands,
    mut state: ResMut<CaptureState>,
    settings: Res<crate::EmotionSettings>,
    time: Res<Time<Real>>,
    (pusher, feed): (Res<FramePusher>, Res<crate::record::ReplayFeed>),
    mut status: ResMut<CameraStatus>,
    mut stats: ResMut<EmotionStats>,
    mut indicator: ResMut<CaptureIndicator>,
    mut writer: MessageWriter<CameraStatusChanged>,
    demand: Res<FrameDemand>,
) {
    let now = time.elapsed_secs_f64();
    let state = &mut *state;
    if state.kind.as_ref() != Some(&settings.source) {
        if let Some(mut s) = state.source.take() {
            s.stop();
        }
        state.kind = Some(settings.source.clone());
        state.retry_at = now;
        state.backoff = 1.0;
    }
    if state.source.is_none() {
        if now < state.retry_at {
            if let CameraStatus::Unavailable { reason, .. } = &*status {
                let new = CameraStatus::Unavailable {
                    reason: reason.clone(),
                    retry_in: (state.retry_at - now).ceil() as f32,
                };
                // Only the countdown changed: update without a message.
                *status = new;
            }
            return;
        }
        let mut s = make_source(&settings.source, &pusher, &feed);
        s.set_demand(demand.clone());
        s.start();
        *indicator = CaptureIndicator {
            live: true,
            source: s.describe(),
        };
        state.last_delivery = now;
        set_status(
            &mut status,
            CameraStatus::Starting(s.describe()),
            &mut writer,
        );
        state.source = Some(s);
    }
    let Some(source) = state.source.as_mut() else {
        return;
    };
    let polled = source.poll(now);
    if !matches!(polled, SourcePoll::Pending) {
        state.last_delivery = now;
    }
    match polled.into_delivered() {
        Ok((frame, at)) => {
            let what = source.describe();
            state.seq += 1;
            state.backoff = 1.0;
            stats.frames_captured += 1;
            // `time` is the app's real clock at capture; `instant` when the
            // frame arrived (before decoding, for the camera).
            let waited = at.elapsed().as_secs_f64();
            commands.insert_resource(LatestFrame {
                frame: Arc::new(frame),
                seq: state.seq,
                time: now - waited,
                instant: at,
            });
            set_status(&mut status, CameraStatus::Running(what), &mut writer);
        }
        Err(SourcePoll::Alive) => {
            let what = source.describe();
            set_status(&mut status, CameraStatus::Running(what), &mut writer);
        }
        Err(SourcePoll::Failed(reason)) => {
            fail_source(state, &mut status, &mut indicator, &mut writer, now, reason);
        }
        // Pending (`into_delivered` turned both frame variants into `Ok`).
        Err(_) => {
            // The watchdog: a running source that went quiet.
            let wait = source.frame_period().map_or(1.0, |p| (2.0 * p).max(1.0));
            let quiet = now - state.last_delivery;
            let reopen = f64::from(settings.reopen_after_stall);
            if matches!(*status, CameraStatus::Stalled(_)) && reopen > 0.0 && quiet > wait + reopen
            {
                // Still nothing: close it and open it again (counts as a
                // failure, so a source that never recovers backs off).
                let reason = format!(
                    "{} (no frame for {quiet:.1} s; reopening)",
                    source.describe()
                );
                fail_source(state, &mut status, &mut indicator, &mut writer, now, reason);
            } else if matches!(*status, CameraStatus::Running(_)) && quiet > wait {
                let what = format!("{} (no frame for {quiet:.1} s)", source.describe());
                set_status(&mut status, CameraStatus::Stalled(what), &mut writer);
            }
        }
    }
}

/// Stops the source after a failure and schedules the next attempt with
/// exponential backoff (1, 2, 4 ... 30 s; reset by the next frame).
fn fail_source(
    state: &mut CaptureState,
    status: &mut CameraStatus,
    indicator: &mut CaptureIndicator,
    writer: &mut MessageWriter<CameraStatusChanged>,
    now: f64,
    reason: String,
) {
    if let Some(mut source) = state.source.take() {
        source.stop();
    }
    *indicator = CaptureIndicator::default();
    let wait = state.backoff;
    state.retry_at = now + f64::from(wait);
    state.backoff = (wait * 2.0).min(30.0);
    set_status(
        status,
        CameraStatus::Unavailable {
            reason,
            retry_in: wait,
        },
        writer,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: u8) -> Frame {
        Frame::new(2, 2, perception::PixelFormat::Gray8, vec![v; 4]).unwrap()
    }

    #[test]
    fn custom_sources_are_made_by_their_factory() {
        let make = CustomSource::new(|| Box::new(PushedSource::new(&FramePusher::default())));
        let kind = SourceKind::Custom(make.clone());
        assert_eq!(kind, SourceKind::Custom(make));
        assert_ne!(kind, SourceKind::Custom(CustomSource::default()));
        let mut src = make_source(&kind, &FramePusher::default(), &Default::default());
        assert_eq!(src.describe(), "frames pushed by the app");
        let mut none = make_source(
            &SourceKind::Custom(CustomSource::default()),
            &FramePusher::default(),
            &Default::default(),
        );
        assert!(matches!(none.poll(0.0), SourcePoll::Failed(_)));
        assert!(matches!(src.poll(0.0), SourcePoll::Pending));
    }

    /// A loader still decoding when the source stops never hands its frames
    /// to the stopped source (nor keeps them alive through it).
    #[test]
    fn a_stopped_image_source_gets_no_late_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 1u32;
        let img = image::RgbImage::from_fn(1500, 1500, |_, _| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
        });
        img.save(dir.path().join("noise.png")).unwrap();
        let mut src = ImageSource::folder(dir.path().to_owned(), 10.0);
        src.start();
        src.stop();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(matches!(src.poll(0.0), SourcePoll::Pending));
        // Started again, it loads and delivers.
        src.start();
        let t = Instant::now();
        loop {
            match src.poll(0.0) {
                SourcePoll::Frame(f) => {
                    assert_eq!(f.width(), 1500);
                    break;
                }
                SourcePoll::Pending => {
                    assert!(t.elapsed().as_secs() < 20, "never loaded");
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn pushed_frames_keep_only_the_newest() {
        let pusher = FramePusher::default();
        let mut src = PushedSource::new(&pusher);
        assert!(matches!(src.poll(0.0), SourcePoll::Pending));
        pusher.push(frame(1));
        let pushed = Instant::now();
        pusher.push(frame(2));
        match src.poll(0.0) {
            // The newest, stamped when it was pushed.
            SourcePoll::Delivered { frame, at } => {
                assert_eq!(frame.data()[0], 2);
                assert!(at >= pushed && at <= Instant::now());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(src.poll(0.0), SourcePoll::Pending));
    }

    #[test]
    fn missing_folder_fails_instead_of_panicking() {
        let mut src = ImageSource::folder("/definitely/not/here".into(), 5.0);
        src.start();
        let mut polled = SourcePoll::Pending;
        for _ in 0..200 {
            polled = src.poll(0.0);
            if !matches!(polled, SourcePoll::Pending) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            matches!(polled, SourcePoll::Failed(ref e) if e.contains("no PNG")),
            "{polled:?}"
        );
    }
}
