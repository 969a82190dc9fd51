//! Ada, the agent: a face built from Bevy meshes whose brows, eyelids, eyes,
//! mouth and head pose are driven by blend parameters per expression, with
//! idle blinking, breathing and a gaze that follows the player's face.

use bevy::prelude::*;
use bevy_emotion::Emotion;

use crate::{Player, PlayerEmotionChanged};

/// Ada's body and animation: spawned at start-up, animated every frame, her
/// expression answering each change of the player's emotion, her gaze on the
/// player's face.
pub struct AgentPlugin;

impl Plugin for AgentPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<AgentState>()
            .add_systems(Startup, spawn)
            .add_systems(Update, (answer, look_at_player, animate).chain());
    }
}

/// Ada answers the player's new emotion with her own expression.
fn answer(mut changes: MessageReader<PlayerEmotionChanged>, mut agent: ResMut<AgentState>) {
    if let Some(c) = changes.read().last() {
        agent.expression = crate::dialogue::agent_expression(c.0);
    }
}

/// Ada looks where the player's main face is (mirrored), or drifts back to
/// the centre when no face is seen.
fn look_at_player(player: Res<Player>, mut agent: ResMut<AgentState>) {
    match player.face_at {
        Some(at) => agent.gaze = Vec2::new(-(at.x * 2.0 - 1.0), at.y * 2.0 - 1.0),
        None => agent.gaze *= 0.95,
    }
}

/// The face's animation parameters (all dimensionless, about -1..1.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceParams {
    /// Brows up (+) or down (-).
    pub brow_raise: f32,
    /// Inner brow ends up (+, sad / worried) or down (-, angry).
    pub brow_tilt: f32,
    /// Eyelid opening: 0 closed, 1 normal, 1.3 wide.
    pub eye_open: f32,
    /// Jaw opening.
    pub mouth_open: f32,
    /// Mouth corners up (+) or down (-).
    pub smile: f32,
    /// Mouth width factor.
    pub mouth_width: f32,
    /// Head roll (tilt), radians.
    pub head_roll: f32,
}

impl FaceParams {
    /// The pose for each expression.
    pub fn of(e: Emotion) -> Self {
        let p = |brow_raise, brow_tilt, eye_open, mouth_open, smile, mouth_width, head_roll| Self {
            brow_raise,
            brow_tilt,
            eye_open,
            mouth_open,
            smile,
            mouth_width,
            head_roll,
        };
        match e {
            Emotion::Neutral | Emotion::Other => p(0.0, 0.0, 1.0, 0.0, 0.05, 1.0, 0.0),
            Emotion::Happy => p(0.08, 0.0, 0.75, 0.35, 1.0, 1.25, 0.06),
            Emotion::Sad => p(-0.02, 0.8, 0.65, 0.0, -0.8, 0.9, -0.1),
            Emotion::Angry => p(-0.12, -0.8, 0.85, 0.1, -0.5, 0.85, 0.0),
            Emotion::Surprise => p(0.25, 0.2, 1.35, 0.9, 0.0, 0.75, 0.0),
            Emotion::Fear => p(0.18, 0.8, 1.3, 0.45, -0.35, 1.1, -0.05),
            Emotion::Disgust | Emotion::Contempt => p(-0.08, -0.4, 0.6, 0.15, -0.6, 1.0, 0.12),
        }
    }

    /// `self + (other - self) * t`.
    pub fn lerp(self, other: Self, t: f32) -> Self {
        let l = |a: f32, b: f32| a + (b - a) * t;
        Self {
            brow_raise: l(self.brow_raise, other.brow_raise),
            brow_tilt: l(self.brow_tilt, other.brow_tilt),
            eye_open: l(self.eye_open, other.eye_open),
            mouth_open: l(self.mouth_open, other.mouth_open),
            smile: l(self.smile, other.smile),
            mouth_width: l(self.mouth_width, other.mouth_width),
            head_roll: l(self.head_roll, other.head_roll),
        }
    }
}

/// The agent's animation state.
#[derive(Resource, Debug, Clone)]
pub struct AgentState {
    /// The expression the agent is showing (target).
    pub expression: Emotion,
    /// Current, blended parameters.
    pub current: FaceParams,
    /// Where the player's face is, -1..1 in both axes (0: centre), if seen.
    pub gaze: Vec2,
    next_blink: f32,
    blink: f32,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            expression: Emotion::Neutral,
            current: FaceParams::of(Emotion::Neutral),
            gaze: Vec2::ZERO,
            next_blink: 2.0,
            blink: 0.0,
        }
    }
}

#[derive(Component)]
pub(crate) enum Part {
    Root,
    Head,
    Pupil(f32),
    Lid,
    Brow(f32),
    MouthCorner(f32),
    LowerLip,
    MouthInside,
}

const EYE_Y: f32 = 0.22;
const EYE_X: f32 = 0.34;
const MOUTH_Y: f32 = -0.42;

/// Spawns the agent, its camera and lights.
fn spawn(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let mat = |materials: &mut Assets<StandardMaterial>, c: Color| {
        materials.add(StandardMaterial {
            base_color: c,
            perceptual_roughness: 0.7,
            ..default()
        })
    };
    let skin = mat(&mut materials, Color::srgb(0.93, 0.76, 0.64));
    let lid = mat(&mut materials, Color::srgb(0.88, 0.7, 0.58));
    let white = mat(&mut materials, Color::srgb(0.97, 0.97, 0.97));
    let iris = mat(&mut materials, Color::srgb(0.15, 0.3, 0.45));
    let hair = mat(&mut materials, Color::srgb(0.25, 0.15, 0.1));
    let lip = mat(&mut materials, Color::srgb(0.75, 0.35, 0.35));
    let dark = mat(&mut materials, Color::srgb(0.25, 0.05, 0.08));
    let shirt = mat(&mut materials, Color::srgb(0.2, 0.45, 0.6));

    commands.spawn((
        Camera3d::default(),
        Transform::from_xyz(0.0, 0.1, 5.2).looking_at(Vec3::new(0.0, -0.2, 0.0), Vec3::Y),
    ));
    commands.spawn((
        DirectionalLight {
            illuminance: 6000.0,
            ..default()
        },
        Transform::from_xyz(2.0, 3.0, 5.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
    commands.spawn((
        PointLight {
            intensity: 600_000.0,
            range: 30.0,
            ..default()
        },
        Transform::from_xyz(-3.0, 1.0, 4.0),
    ));

    let sphere = meshes.add(Sphere::new(1.0).mesh().uv(32, 18));
    let cube = meshes.add(Cuboid::new(1.0, 1.0, 1.0));
    let body = meshes.add(Capsule3d::new(0.9, 1.2));

    commands.spawn((
        Mesh3d(body),
        MeshMaterial3d(shirt),
        Transform::from_xyz(0.0, -2.3, -0.3),
    ));
    commands
        .spawn((Part::Root, Transform::default(), Visibility::default()))
        .with_children(|root| {
            root.spawn((
                Part::Head,
                Mesh3d(sphere.clone()),
                MeshMaterial3d(skin.clone()),
                Transform::from_scale(Vec3::new(0.9, 1.1, 0.85)),
            ));
            // Hair cap.
            root.spawn((
                Mesh3d(sphere.clone()),
                MeshMaterial3d(hair),
                Transform::from_xyz(0.0, 0.35, -0.12).with_scale(Vec3::new(0.95, 0.85, 0.85)),
            ));
            // Nose.
            root.spawn((
                Mesh3d(sphere.clone()),
                MeshMaterial3d(skin.clone()),
                Transform::from_xyz(0.0, -0.08, 0.86).with_scale(Vec3::new(0.1, 0.14, 0.12)),
            ));
            for side in [-1.0f32, 1.0] {
                let x = side * EYE_X;
                root.spawn((
                    Mesh3d(sphere.clone()),
                    MeshMaterial3d(white.clone()),
                    Transform::from_xyz(x, EYE_Y, 0.66).with_scale(Vec3::splat(0.17)),
                ));
                root.spawn((
                    Part::Pupil(side),
                    Mesh3d(sphere.clone()),
                    MeshMaterial3d(iris.clone()),
                    Transform::from_xyz(x, EYE_Y, 0.8).with_scale(Vec3::splat(0.075)),
                ));
                root.spawn((
                    Part::Lid,
                    Mesh3d(sphere.clone()),
                    MeshMaterial3d(lid.clone()),
                    Transform::from_xyz(x, EYE_Y + 0.2, 0.7)
                        .with_scale(Vec3::new(0.19, 0.12, 0.19)),
                ));
                root.spawn((
                    Part::Brow(side),
                    Mesh3d(cube.clone()),
                    MeshMaterial3d(hair_color(&mut materials)),
                    Transform::from_xyz(x, EYE_Y + 0.25, 0.8)
                        .with_scale(Vec3::new(0.32, 0.055, 0.06)),
                ));
                root.spawn((
                    Part::MouthCorner(side),
                    Mesh3d(cube.clone()),
                    MeshMaterial3d(lip.clone()),
                    Transform::from_xyz(side * 0.12, MOUTH_Y, 0.8)
                        .with_scale(Vec3::new(0.24, 0.05, 0.05)),
                ));
            }
            root.spawn((
                Part::LowerLip,
                Mesh3d(cube.clone()),
                MeshMaterial3d(lip),
                Transform::from_xyz(0.0, MOUTH_Y - 0.04, 0.79)
                    .with_scale(Vec3::new(0.3, 0.05, 0.05)),
            ));
            root.spawn((
                Part::MouthInside,
                Mesh3d(cube),
                MeshMaterial3d(dark),
                Transform::from_xyz(0.0, MOUTH_Y - 0.02, 0.76)
                    .with_scale(Vec3::new(0.3, 0.01, 0.04)),
            ));
        });
}

fn hair_color(materials: &mut Assets<StandardMaterial>) -> Handle<StandardMaterial> {
    materials.add(StandardMaterial {
        base_color: Color::srgb(0.22, 0.13, 0.08),
        perceptual_roughness: 0.9,
        ..default()
    })
}

/// Blends toward the target expression, blinks, breathes and looks at the
/// player, then poses every part.
fn animate(
    time: Res<Time>,
    mut state: ResMut<AgentState>,
    mut parts: Query<(&Part, &mut Transform)>,
) {
    let dt = time.delta_secs().min(0.1);
    let t = time.elapsed_secs();
    let target = FaceParams::of(state.expression);
    state.current = state.current.lerp(target, 1.0 - (-dt * 5.0).exp());
    // Blink: every 2.5-5 s, 0.15 s long.
    state.next_blink -= dt;
    if state.next_blink <= 0.0 {
        state.blink = 0.15;
        state.next_blink = 2.5 + (t * 7.31).sin().abs() * 2.5;
    }
    state.blink = (state.blink - dt).max(0.0);
    let blink = if state.blink > 0.0 {
        1.0 - (state.blink / 0.15 * std::f32::consts::PI).sin()
    } else {
        1.0
    };
    let p = state.current;
    let gaze = state.gaze.clamp(Vec2::splat(-1.0), Vec2::splat(1.0));
    let breath = (t * 1.6).sin();
    for (part, mut tf) in &mut parts {
        match part {
            Part::Root => {
                tf.translation.y = breath * 0.02;
                tf.rotation =
                    Quat::from_euler(EulerRot::YXZ, gaze.x * 0.25, -gaze.y * 0.15, p.head_roll);
            }
            Part::Head => {
                tf.scale = Vec3::new(0.9, 1.1, 0.85) * (1.0 + breath * 0.004);
            }
            Part::Pupil(side) => {
                tf.translation.x = side * EYE_X + gaze.x * 0.06;
                tf.translation.y = EYE_Y - gaze.y * 0.04;
            }
            Part::Lid => {
                // Open: the lid sits above the eye; closed: it covers it.
                let open = (p.eye_open * blink).clamp(0.0, 1.4);
                tf.translation.y = EYE_Y + 0.02 + open * 0.14;
                tf.scale.y = 0.2 - open * 0.06;
            }
            Part::Brow(side) => {
                tf.translation.y = EYE_Y + 0.25 + p.brow_raise + p.brow_tilt * 0.03;
                // Positive tilt lifts the inner end (towards x = 0).
                tf.rotation = Quat::from_rotation_z(-side * p.brow_tilt * 0.35);
            }
            Part::MouthCorner(side) => {
                let w = p.mouth_width;
                tf.translation.x = side * 0.12 * w;
                tf.translation.y = MOUTH_Y + p.smile * 0.03;
                tf.scale.x = 0.24 * w;
                tf.rotation = Quat::from_rotation_z(side * p.smile * 0.35);
            }
            Part::LowerLip => {
                tf.translation.y = MOUTH_Y - 0.05 - p.mouth_open * 0.16;
                tf.scale.x = 0.28 * p.mouth_width;
            }
            Part::MouthInside => {
                tf.translation.y = MOUTH_Y - 0.03 - p.mouth_open * 0.08;
                tf.scale.y = 0.01 + p.mouth_open * 0.16;
                tf.scale.x = 0.26 * p.mouth_width;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expression_has_a_distinct_pose() {
        let poses: Vec<FaceParams> = Emotion::FER2013
            .iter()
            .map(|&e| FaceParams::of(e))
            .collect();
        for (i, a) in poses.iter().enumerate() {
            for b in &poses[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let happy = FaceParams::of(Emotion::Happy);
        let sad = FaceParams::of(Emotion::Sad);
        let angry = FaceParams::of(Emotion::Angry);
        let surprise = FaceParams::of(Emotion::Surprise);
        assert!(happy.smile > 0.5 && sad.smile < -0.5);
        assert!(sad.brow_tilt > 0.5 && angry.brow_tilt < -0.5);
        assert!(surprise.eye_open > 1.2 && surprise.mouth_open > 0.5);
    }

    #[test]
    fn blending_is_smooth_and_reaches_the_target() {
        let a = FaceParams::of(Emotion::Neutral);
        let b = FaceParams::of(Emotion::Happy);
        assert_eq!(a.lerp(b, 0.0), a);
        assert_eq!(a.lerp(b, 1.0), b);
        let mid = a.lerp(b, 0.5);
        assert!(mid.smile > a.smile && mid.smile < b.smile);
    }
}
