//! The face follower on made-up video: the periodic detection by time as
//! well as by frames, two faces crossing, twenty faces, and a face leaving
//! through the frame's edge. Faces are tiles cut around a face of a shared
//! photo and pasted onto a gray canvas, so every test knows where they are.
//! Uses the shipped weights and the shared photos (fails loudly without
//! them).

mod common;

use std::time::{Duration, Instant};

use common::{faces_dir, repo};
use models::yunet::YuNet;
use perception::{
    Classifier, Detection, Detector, DetectorConfig, FaceFollower, FollowConfig, Frame, Pipeline,
    PixelFormat,
};

const W: usize = 640;
const H: usize = 480;

fn pipeline(max_faces: usize) -> Pipeline {
    let detector = Detector::from_file(
        repo().join("assets/models/mtcnn.safetensors"),
        DetectorConfig {
            min_face_size: 40.0,
            ..Default::default()
        },
    )
    .unwrap()
    .with_yunet(YuNet::from_file(repo().join("assets/models/yunet.safetensors")).unwrap());
    let classifier =
        Classifier::from_file(repo().join("assets/models/arch1_fer2013.safetensors")).unwrap();
    Pipeline::new(detector, classifier, max_faces)
}

/// A `side` x `side` RGB tile: the square of twice the face's width around
/// the face of the portrait, nearest-neighbour resampled.
fn face_tile(p: &Pipeline, side: usize) -> Vec<u8> {
    let photo = Frame::open(faces_dir().join("Tom_Cruise_avp_2014_4.jpg")).unwrap();
    let faces = p.detector().detect(&photo).unwrap();
    assert_eq!(faces.len(), 1, "the portrait has one face");
    let [x1, y1, x2, y2] = faces[0].bbox;
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    let half = (x2 - x1).max(y2 - y1);
    let rgb = photo.to_rgb8();
    let (pw, ph) = (photo.width() as f32, photo.height() as f32);
    let mut tile = vec![127u8; side * side * 3];
    for ty in 0..side {
        for tx in 0..side {
            let sx = cx - half + (tx as f32 + 0.5) * 2.0 * half / side as f32;
            let sy = cy - half + (ty as f32 + 0.5) * 2.0 * half / side as f32;
            if sx < 0.0 || sy < 0.0 || sx >= pw || sy >= ph {
                continue;
            }
            let s = (sy as usize * photo.width() + sx as usize) * 3;
            tile[(ty * side + tx) * 3..][..3].copy_from_slice(&rgb[s..s + 3]);
        }
    }
    tile
}

/// A gray `W` x `H` frame with `tile` pasted at each top-left corner
/// (clipped at the edges; later tiles cover earlier ones).
fn canvas(tile: &[u8], side: usize, at: &[(i32, i32)]) -> Frame {
    let mut rgb = vec![127u8; W * H * 3];
    for &(x0, y0) in at {
        for ty in 0..side as i32 {
            for tx in 0..side as i32 {
                let (x, y) = (x0 + tx, y0 + ty);
                if x < 0 || y < 0 || x >= W as i32 || y >= H as i32 {
                    continue;
                }
                let (d, s) = (
                    (y as usize * W + x as usize) * 3,
                    (ty as usize * side + tx as usize) * 3,
                );
                rgb[d..d + 3].copy_from_slice(&tile[s..s + 3]);
            }
        }
    }
    Frame::new(W, H, PixelFormat::Rgb8, rgb).unwrap()
}

/// Whether some followed face lies over the tile at `(x, y)`.
fn covers(faces: &[Detection], side: usize, (x, y): (i32, i32)) -> bool {
    let s = side as f32;
    let (cx, cy) = (x as f32 + s / 2.0, y as f32 + s / 2.0);
    faces.iter().any(|d| {
        let [x1, y1, x2, y2] = d.bbox;
        (x1..x2).contains(&cx) && (y1..y2).contains(&cy)
    })
}

fn detections(faces: &perception::FrameFaces) -> Vec<Detection> {
    faces.faces.iter().map(|f| f.detection.clone()).collect()
}

/// No two followed faces are the same face.
fn assert_distinct(faces: &[Detection], frame: usize) {
    for (i, a) in faces.iter().enumerate() {
        for b in &faces[i + 1..] {
            assert!(
                a.iou(&b.bbox) < 0.5,
                "frame {frame}: one face followed twice: {a:?} {b:?}"
            );
        }
    }
}

/// The frames (of eleven, 40 ms apart from `start`, one face each) on which
/// `config`'s follower ran the detector; `check(i, follower)` after each.
fn detector_frames(
    p: &Pipeline,
    frame: &Frame,
    config: FollowConfig,
    start: Instant,
    mut check: impl FnMut(u64, &FaceFollower),
) -> Vec<u64> {
    let mut follower = FaceFollower::new(config);
    let mut ran_at = Vec::new();
    for i in 0..11 {
        let now = start + Duration::from_millis(40 * i);
        let (faces, ran) = follower.process_at(p, frame, now).unwrap();
        assert_eq!(faces.faces.len(), 1, "frame {i}");
        if ran {
            ran_at.push(i);
        }
        check(i, &follower);
    }
    ran_at
}

#[test]
fn periodic_detection_runs_by_time_as_well_as_by_frames() {
    let p = pipeline(8);
    let side = 160;
    let frame = canvas(&face_tile(&p, side), side, &[(240, 160)]);
    let start = Instant::now();
    for (after, want) in [
        // 40 ms a frame (25 frames/s): every 100 ms is every third frame.
        (Some(Duration::from_millis(100)), vec![0, 3, 6, 9]),
        (None, vec![0]),
    ] {
        let config = FollowConfig {
            detect_every: 1000,
            detect_after: after,
            background_detection: false,
        };
        let ran_at = detector_frames(&p, &frame, config, start, |_, _| {});
        assert_eq!(ran_at, want, "detect_after {after:?}");
    }
    // In the background, never given time: a detection starts once the
    // period is over (120 ms, frame 3) and is finished in one go when the
    // next period is over (frame 6), which starts the next (finished at 9).
    let config = FollowConfig {
        detect_every: 1000,
        detect_after: Some(Duration::from_millis(100)),
        background_detection: true,
    };
    let ran_at = detector_frames(&p, &frame, config, start, |i, f| {
        if i == 3 {
            assert!(f.has_work(), "no background detection started");
        }
    });
    assert_eq!(ran_at, [0, 6, 9]);
}

#[test]
fn two_faces_crossing_stay_two_faces_or_one_and_come_back() {
    let p = pipeline(8);
    let side = 120;
    let tile = face_tile(&p, side);
    let mut follower = FaceFollower::new(FollowConfig {
        detect_every: 5,
        detect_after: None,
        background_detection: false,
    });
    let steps = 17;
    let mut last = Vec::new();
    for i in 0..steps {
        // A moves right, B left; they overlap in the middle frames (B on top).
        let a = (60 + 30 * i, 180);
        let b = (460 - 30 * i, 180);
        let frame = canvas(&tile, side, &[a, b]);
        let (faces, _) = follower.process(&p, &frame).unwrap();
        let faces = detections(&faces);
        assert!(faces.len() <= 2, "frame {i}: {} faces", faces.len());
        assert_distinct(&faces, i as usize);
        if (a.0 - b.0).abs() >= side as i32 {
            // Apart: both are there unless a track has just been handed back.
            assert!(covers(&faces, side, b), "frame {i}: the face on top lost");
        }
        last = faces;
    }
    // Apart again at the end: both followed.
    let (a, b) = ((60 + 30 * (steps - 1), 180), (460 - 30 * (steps - 1), 180));
    assert!(covers(&last, side, a) && covers(&last, side, b), "{last:?}");
}

#[test]
fn twenty_faces_are_followed_and_capped_by_max_faces() {
    let side = 112;
    for max_faces in [32, 8] {
        let p = pipeline(max_faces);
        let tile = face_tile(&p, side);
        let spots: Vec<(i32, i32)> = (0..20i32)
            .map(|k| (8 + 126 * (k % 5), 4 + 118 * (k / 5)))
            .collect();
        let mut follower = FaceFollower::new(FollowConfig {
            detect_after: None,
            ..Default::default()
        });
        for i in 0..6 {
            // The whole grid drifts 3 px a frame.
            let at: Vec<(i32, i32)> = spots.iter().map(|&(x, y)| (x + 3 * i, y + i)).collect();
            let frame = canvas(&tile, side, &at);
            let (faces, _) = follower.process(&p, &frame).unwrap();
            let faces = detections(&faces);
            assert_distinct(&faces, i as usize);
            if max_faces == 8 {
                assert_eq!(faces.len(), 8, "frame {i}");
            } else {
                let found = at.iter().filter(|&&s| covers(&faces, side, s)).count();
                assert!(found >= 19, "frame {i}: {found} of 20 faces followed");
                assert!(faces.len() <= 20, "frame {i}: {} faces", faces.len());
            }
        }
    }
}

#[test]
fn a_face_leaving_through_the_edge_is_let_go() {
    let p = pipeline(8);
    let side = 160;
    let tile = face_tile(&p, side);
    let mut follower = FaceFollower::new(FollowConfig {
        detect_after: None,
        ..Default::default()
    });
    let mut gone_at = None;
    for i in 0..16 {
        let x = 400 + 25 * i;
        let frame = canvas(&tile, side, &[(x, 160)]);
        let (faces, _) = follower.process(&p, &frame).unwrap();
        for f in &faces.faces {
            // Whatever is followed lies in the frame (boxes may reach past
            // the edge by the margin O-Net regresses, not far).
            let [x1, _, x2, _] = f.detection.bbox;
            assert!(
                x1 < W as f32 && x2 > x1,
                "frame {i}: {:?}",
                f.detection.bbox
            );
        }
        if x >= W as i32 {
            // Wholly outside: nothing stays followed.
            assert!(
                faces.faces.is_empty(),
                "frame {i}: a stale face {:?}",
                faces.faces[0].detection
            );
            gone_at.get_or_insert(i);
        } else if x + (side as i32) / 2 < W as i32 - 20 {
            assert_eq!(
                faces.faces.len(),
                1,
                "frame {i}: the face in view is followed"
            );
        }
    }
    assert!(gone_at.is_some());
    // An empty frame after that: still nothing, and no error.
    let (faces, ran) = follower.process(&p, &canvas(&tile, side, &[])).unwrap();
    assert!(faces.faces.is_empty() && ran);
}
