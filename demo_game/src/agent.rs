//! Ada, the agent: a smooth 2D face ([`crate::face`]) driven by FACS action
//! units. Her expression comes from the dialogue line she is saying (each
//! expression an action-unit recipe from `assets/demo/ada.expressions.ron`,
//! reloaded when it changes), blended in over a fraction of a second; her
//! mouth follows the words she says (visemes from the letters, on a
//! timeline); she blinks, breathes, looks at the player's face with small
//! saccades, and listens with nods and a little mirroring of the player's
//! expression while they answer.

use std::sync::Arc;

use bevy::asset::RenderAssetUsages;
use bevy::mesh::PrimitiveTopology;
use bevy::prelude::*;
use bevy_emotion::Emotion;
use serde::Deserialize;

use crate::data::{DataError, DataFile, DataFilePlugin};
use crate::dialogue::Talk;
use crate::face::{ActionUnits, Au, Pose, Recipes, draw};
use crate::{Player, PlayerEmotionChanged};

/// The shipped recipes, compiled in (used until the asset is loaded).
pub const BUILTIN: &str = include_str!("../../assets/demo/ada.expressions.ron");

/// Where the asset server finds them.
pub const PATH: &str = "demo/ada.expressions.ron";

/// Ada's face, animation and placement.
pub struct AgentPlugin {
    /// Hold this expression at full intensity, alone on screen, with no
    /// speech, blinks or gaze (`--express`).
    pub hold: Option<Emotion>,
}

impl Plugin for AgentPlugin {
    fn build(&self, app: &mut App) {
        let mut state = AgentState {
            hold: self.hold,
            expression: self.hold.unwrap_or(Emotion::Neutral),
            ..AgentState::default()
        };
        state.current = state.target();
        app.add_plugins(DataFilePlugin::<ExpressionRecipes>::default())
            .init_resource::<Voice>()
            .insert_resource(state)
            .add_systems(Startup, spawn)
            .add_systems(
                Update,
                (reload, follow_dialogue, listen, look_at_player, animate).chain(),
            );
    }
}

/// The expression recipes file.
#[derive(Asset, TypePath, Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct ExpressionRecipes(pub Recipes);

impl DataFile for ExpressionRecipes {
    const EXTENSION: &'static str = "expressions.ron";

    fn check(&self, text: &str) -> Result<(), DataError> {
        for e in Emotion::FER2013 {
            let Some(r) = self.0.get(e.name()) else {
                return Err(DataError::at_value(
                    text,
                    e.name(),
                    format!("no recipe for `{}`", e.name()),
                ));
            };
            if let Some((au, v)) = r.iter().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
                return Err(DataError::at_value(
                    text,
                    au.name(),
                    format!("{} in `{}` is {v}, outside 0..1", au.name(), e.name()),
                ));
            }
        }
        Ok(())
    }
}

/// Ada's animation state.
#[derive(Resource, Debug, Clone)]
pub struct AgentState {
    /// The recipes in use.
    pub recipes: Arc<Recipes>,
    /// The recipes asset.
    pub handle: Handle<ExpressionRecipes>,
    /// The expression she is making (target).
    pub expression: Emotion,
    /// Held expression (`--express`): no speech, blinks or mirroring.
    pub hold: Option<Emotion>,
    /// The player's expression while Ada listens (mirrored a little).
    pub mirror: Option<Emotion>,
    /// Current, blended action units (before speech and blinks).
    pub current: ActionUnits,
    /// What she shows this frame (after speech and blinks).
    pub shown: ActionUnits,
    /// Where the player's face is, -1..1 in both axes (0: centre), if seen.
    pub gaze: Vec2,
    /// The words she is saying, and how far she is (seconds).
    pub speech: Option<(Vec<char>, f32)>,
    /// The dialogue line last spoken.
    pub line_id: Option<u32>,
    saccade: Vec2,
    next_saccade: f32,
    next_blink: f32,
    blink: f32,
    nod: f32,
    next_nod: f32,
    rng: u64,
}

impl Default for AgentState {
    fn default() -> Self {
        let recipes = ExpressionRecipes::parse(BUILTIN)
            .map(|r| r.0)
            .unwrap_or_else(|e| {
                error!("the compiled-in expressions are broken: {e}");
                Recipes::new()
            });
        Self {
            recipes: Arc::new(recipes),
            handle: Handle::default(),
            expression: Emotion::Neutral,
            hold: None,
            mirror: None,
            current: ActionUnits::default(),
            shown: ActionUnits::default(),
            gaze: Vec2::ZERO,
            speech: None,
            line_id: None,
            saccade: Vec2::ZERO,
            next_saccade: 0.5,
            next_blink: 2.0,
            blink: 0.0,
            nod: 0.0,
            next_nod: 3.0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl AgentState {
    /// The action units of `e` at `intensity`.
    pub fn recipe(&self, e: Emotion, intensity: f32) -> ActionUnits {
        self.recipes
            .get(e.name())
            .map(|r| ActionUnits::from_recipe(r, intensity))
            .unwrap_or_default()
    }

    /// Where the face is heading: her expression, with a quarter of the
    /// player's while she listens.
    pub fn target(&self) -> ActionUnits {
        let own = self.recipe(self.expression, 1.0);
        match (self.hold, self.mirror) {
            (None, Some(m)) if self.speech.is_none() => own.lerp(&self.recipe(m, 1.0), 0.25),
            _ => own,
        }
    }

    fn random(&mut self) -> f32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Characters per second of Ada's speech.
const SPEECH_RATE: f32 = 14.0;

/// The mouth for one letter (a viseme): jaw and lip units.
pub fn viseme(c: char) -> ActionUnits {
    let mut au = ActionUnits::default();
    let mut set = |u, v| au.set(u, v);
    match c.to_ascii_lowercase() {
        'a' => {
            set(Au::Au25, 1.0);
            set(Au::Au26, 0.45);
        }
        'e' | 'i' | 'y' => {
            set(Au::Au25, 1.0);
            set(Au::Au26, 0.2);
            set(Au::Au20, 0.5);
        }
        'o' | 'u' | 'w' | 'q' => {
            set(Au::Au25, 1.0);
            set(Au::Au26, 0.25);
            set(Au::Au18, 0.9);
        }
        'm' | 'b' | 'p' => set(Au::Au23, 0.4),
        'f' | 'v' => {
            set(Au::Au10, 0.4);
            set(Au::Au25, 0.5);
        }
        c if c.is_alphabetic() => {
            set(Au::Au25, 0.7);
            set(Au::Au26, 0.12);
        }
        _ => {}
    }
    au
}

/// The mouth at `t` seconds into `text` (blended between letters); `None`
/// once the text is over.
pub fn speech_at(text: &[char], t: f32) -> Option<ActionUnits> {
    let pos = t * SPEECH_RATE;
    let i = pos as usize;
    if i >= text.len() {
        return None;
    }
    let next = text.get(i + 1).copied().unwrap_or(' ');
    Some(viseme(text[i]).lerp(&viseme(next), pos.fract()))
}

const MOUTH: [Au; 6] = [Au::Au10, Au::Au18, Au::Au20, Au::Au23, Au::Au25, Au::Au26];

/// Ada's drawing: one mesh, rebuilt every frame.
#[derive(Component)]
pub struct AdaFace;

fn spawn(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<ColorMaterial>>,
    server: Res<AssetServer>,
    mut state: ResMut<AgentState>,
) {
    state.handle = server.load(PATH);
    commands.spawn(Camera2d);
    let mesh = Mesh::new(
        PrimitiveTopology::TriangleList,
        RenderAssetUsages::default(),
    );
    // Beside the panel on the left and above the dialogue bar; centred
    // when she is alone (`--express`).
    let (at, scale) = if state.hold.is_some() {
        (Vec3::new(0.0, 40.0, 0.0), 165.0)
    } else {
        (Vec3::new(170.0, 70.0, 0.0), 125.0)
    };
    commands.spawn((
        AdaFace,
        Mesh2d(meshes.add(mesh)),
        MeshMaterial2d(materials.add(ColorMaterial::default())),
        Transform::from_translation(at).with_scale(Vec3::splat(scale)),
    ));
}

/// The recipes file loaded or changed.
fn reload(
    mut events: MessageReader<AssetEvent<ExpressionRecipes>>,
    assets: Res<Assets<ExpressionRecipes>>,
    mut state: ResMut<AgentState>,
) {
    for ev in events.read() {
        if let AssetEvent::Added { id } | AssetEvent::Modified { id } = ev
            && *id == state.handle.id()
            && let Some(r) = assets.get(*id)
        {
            state.recipes = Arc::new(r.0.clone());
        }
    }
}

/// Speak Ada's lines aloud through `espeak-ng` (`--voice`): only when it is
/// installed; the mouth animation does not depend on it.
#[derive(Resource, Debug, Default)]
pub struct Voice(pub bool);

fn say_aloud(text: &str, voice: &mut Voice) {
    match std::process::Command::new("espeak-ng")
        .arg(text)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // Reaped on a thread of its own; a new line does not wait for it.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => {
            warn!("no voice: cannot run espeak-ng ({e}); Ada goes on silently");
            voice.0 = false;
        }
    }
}

/// A new dialogue line: Ada says it with its expression.
fn follow_dialogue(talk: Res<Talk>, mut state: ResMut<AgentState>, mut voice: ResMut<Voice>) {
    if state.hold.is_some() || state.line_id == Some(talk.dialogue.line_id) {
        return;
    }
    state.line_id = Some(talk.dialogue.line_id);
    state.expression = talk
        .dialogue
        .face()
        .map_or(Emotion::Neutral, Emotion::from_name);
    let text = talk.dialogue.text();
    if voice.0 {
        say_aloud(&text, &mut voice);
    }
    state.speech = Some((text.chars().collect(), 0.0));
}

/// While the player answers: a nod at each change of their expression, a
/// backchannel nod now and then, and a little of their expression mirrored.
fn listen(
    mut changes: MessageReader<PlayerEmotionChanged>,
    player: Res<Player>,
    time: Res<Time>,
    mut state: ResMut<AgentState>,
) {
    if state.hold.is_some() {
        return;
    }
    state.mirror = player.emotion();
    let changed = changes.read().last().is_some();
    let speaking = state.speech.is_some();
    state.next_nod -= time.delta_secs();
    if !speaking && player.face_at.is_some() && (changed || state.next_nod <= 0.0) {
        state.nod = 0.6;
        state.next_nod = 2.5 + state.random() * 2.0;
    }
}

/// Ada looks where the player's main face is (mirrored), with small
/// saccades, or drifts back to the centre when no face is seen.
fn look_at_player(player: Res<Player>, time: Res<Time>, mut state: ResMut<AgentState>) {
    if state.hold.is_some() {
        state.gaze = Vec2::ZERO;
        return;
    }
    let target = player.face_at.map_or(Vec2::ZERO, |at| {
        Vec2::new(-(at.x * 2.0 - 1.0), -(at.y * 2.0 - 1.0))
    });
    let k = 1.0 - (-time.delta_secs() * 6.0).exp();
    state.gaze = state.gaze.lerp(target, k);
    state.next_saccade -= time.delta_secs();
    if state.next_saccade <= 0.0 {
        state.saccade = Vec2::new(state.random() - 0.5, state.random() - 0.5) * 0.3;
        state.next_saccade = 0.4 + state.random() * 1.4;
    }
}

/// Blends toward the target, speaks, blinks, breathes and nods, then
/// redraws the face.
fn animate(
    time: Res<Time>,
    mut state: ResMut<AgentState>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut face: Query<(&Mesh2d, &mut Transform), With<AdaFace>>,
    mut base: Local<Option<Vec3>>,
) {
    let dt = time.delta_secs().min(0.1);
    let t = time.elapsed_secs();
    let target = state.target();
    state.current = if state.hold.is_some() {
        target
    } else {
        state.current.lerp(&target, 1.0 - (-dt * 6.0).exp())
    };
    let mut shown = state.current;
    // Speech on the mouth.
    if let Some((text, at)) = state.speech.take() {
        let at = at + dt;
        if let Some(mouth) = speech_at(&text, at) {
            for u in MOUTH {
                shown.set(u, (shown.get(u) * 0.5).max(mouth.get(u)));
            }
            state.speech = Some((text, at));
        }
    }
    // Blinks every 2-6 s, 0.15 s long.
    if state.hold.is_none() {
        state.next_blink -= dt;
        if state.next_blink <= 0.0 {
            state.blink = 0.15;
            state.next_blink = 2.0 + state.random() * 4.0;
        }
        state.blink = (state.blink - dt).max(0.0);
        let closing = (state.blink / 0.15 * std::f32::consts::PI).sin();
        shown.set(Au::Au45, shown.get(Au::Au45).max(closing));
    }
    state.shown = shown;
    state.nod = (state.nod - dt).max(0.0);
    let nod = -(state.nod / 0.6 * std::f32::consts::PI).sin() * 0.5;
    let gaze = (state.gaze + state.saccade).clamp(Vec2::splat(-1.0), Vec2::splat(1.0));
    let pose = Pose {
        gaze: [gaze.x, gaze.y],
        yaw: gaze.x * 0.25,
        pitch: nod + gaze.y * 0.15,
    };
    let tri = draw(&shown, &pose);
    let Ok((handle, mut tf)) = face.single_mut() else {
        return;
    };
    let origin = *base.get_or_insert(tf.translation);
    let breath = if state.hold.is_some() {
        0.0
    } else {
        (t * 1.6).sin()
    };
    tf.translation = origin + Vec3::new(0.0, breath * 2.0 + nod * 8.0, 0.0);
    let tilt = match state.expression {
        Emotion::Sad => -0.08,
        Emotion::Happy => 0.05,
        _ => 0.0,
    };
    tf.rotation = Quat::from_rotation_z(if state.hold.is_some() {
        0.0
    } else {
        tilt + 0.02 * (t * 0.37).sin()
    });
    if let Some(mut mesh) = meshes.get_mut(&handle.0) {
        let positions: Vec<[f32; 3]> = tri
            .positions
            .iter()
            .enumerate()
            .map(|(i, p)| [p[0], p[1], i as f32 * 1e-6])
            .collect();
        // A plain triangle list, drawn in order: no index buffer needed.
        mesh.insert_attribute(Mesh::ATTRIBUTE_POSITION, positions);
        mesh.insert_attribute(Mesh::ATTRIBUTE_COLOR, tri.colours);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_recipes_load() {
        let r = ExpressionRecipes::parse(BUILTIN).unwrap();
        assert_eq!(r.0.len(), 7);
        let broken = BUILTIN.replacen("\"AU12\": 1.0", "\"AU12\": 3.0", 1);
        let e = ExpressionRecipes::parse(&broken).unwrap_err();
        assert!(e.message.contains("outside 0..1"), "{e}");
        let line = broken.lines().position(|l| l.contains("3.0")).unwrap() + 1;
        assert_eq!(e.line, line);
        assert!(ExpressionRecipes::parse(&BUILTIN.replacen("\"AU12\"", "\"AU99\"", 1)).is_err());
    }

    #[test]
    fn speech_moves_the_mouth_letter_by_letter() {
        let text: Vec<char> = "Hello, Ada".chars().collect();
        let open = speech_at(&text, 1.0 / SPEECH_RATE).unwrap(); // 'e'
        assert!(open.get(Au::Au25) > 0.5);
        let m: Vec<char> = "mm".chars().collect();
        assert_eq!(speech_at(&m, 0.0).unwrap().get(Au::Au25), 0.0);
        assert!(speech_at(&text, 10.0).is_none(), "silent after the text");
        assert!(viseme('o').get(Au::Au18) > 0.5);
    }

    #[test]
    fn listening_mirrors_a_little_and_holding_does_not() {
        let mut s = AgentState {
            mirror: Some(Emotion::Happy),
            ..AgentState::default()
        };
        assert!(s.target().get(Au::Au12) > 0.2 && s.target().get(Au::Au12) < 0.3);
        s.hold = Some(Emotion::Neutral);
        assert_eq!(s.target().get(Au::Au12), 0.0);
    }
}
