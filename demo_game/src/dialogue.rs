//! The conversation: a dialogue graph loaded from `assets/demo/ada.dialogue.ron`
//! (a Bevy asset, reloaded when the file changes), whose branches follow the
//! perception contract (an expression's onset, "unsure", calibration, the
//! face lost and found) and the player's replies. Ada remembers what she has
//! seen and can refer to it in her lines. The graph and the conversation's
//! state are plain logic, tested headless; [`DialoguePlugin`] drives them
//! from the demo's messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use bevy::prelude::*;
use bevy_emotion::Emotion;
use serde::Deserialize;

use crate::data::{DataError, DataFile, DataFilePlugin};
use crate::{PlayerEmotionChanged, PlayerPresence, PlayerUnsure};

/// The shipped dialogue, also compiled in (used until the asset is loaded,
/// and when the file on disk is broken).
pub const BUILTIN: &str = include_str!("../../assets/demo/ada.dialogue.ron");

/// Where the asset server finds the dialogue.
pub const PATH: &str = "demo/ada.dialogue.ron";

/// Loads the dialogue asset and drives the conversation.
pub struct DialoguePlugin;

impl Plugin for DialoguePlugin {
    fn build(&self, app: &mut App) {
        app.add_plugins(DataFilePlugin::<DialogueGraph>::default())
            .init_resource::<Talk>()
            .add_systems(Startup, load)
            .add_systems(Update, (reload, converse).chain());
    }
}

/// One node: what Ada says, the face she makes, the replies.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogueNode {
    /// Ada's words; `{player}`, `{previous}`, `{most_seen}` and `{seen}` are
    /// filled in from what she has seen.
    pub say: String,
    /// Ada's expression while she says it (an expression name); neutral when
    /// absent.
    #[serde(default)]
    pub face: Option<String>,
    /// `(reply text, next node)`.
    #[serde(default)]
    pub replies: Vec<(String, String)>,
    /// Whether the perception events may move the conversation away from
    /// this node (otherwise the player answers first).
    #[serde(default)]
    pub interruptible: bool,
}

/// Where perception moves the conversation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transitions {
    /// An expression's onset on the player's face: expression name to node.
    pub onset: BTreeMap<String, String>,
    /// The player's face has been unreadable for a while.
    pub unsure: String,
    /// The player's face left.
    pub face_lost: String,
    /// The player's face came back.
    pub face_found: String,
    /// Neutral calibration started.
    pub calibration_started: String,
    /// Neutral calibration finished.
    pub calibration_done: String,
}

/// The dialogue file.
#[derive(Asset, TypePath, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogueGraph {
    /// The first node.
    pub start: String,
    /// Every node by name.
    pub nodes: BTreeMap<String, DialogueNode>,
    /// Perception's transitions.
    pub on: Transitions,
}

impl DataFile for DialogueGraph {
    const EXTENSION: &'static str = "dialogue.ron";

    /// Every name a node refers to exists, and every one of the seven
    /// expressions has an onset transition.
    fn check(&self, text: &str) -> Result<(), DataError> {
        let known = |name: &str| self.nodes.contains_key(name);
        let missing = |name: &str, what: String| DataError::at_value(text, name, what);
        if !known(&self.start) {
            return Err(missing(
                &self.start,
                format!("start node `{}` does not exist", self.start),
            ));
        }
        for (name, node) in &self.nodes {
            if node.say.trim().is_empty() {
                return Err(DataError::at_value(
                    text,
                    name,
                    format!("node `{name}` says nothing"),
                ));
            }
            for (_, next) in &node.replies {
                if !known(next) {
                    return Err(missing(
                        next,
                        format!("node `{name}` replies to `{next}`, which does not exist"),
                    ));
                }
            }
        }
        for e in Emotion::FER2013 {
            match self.on.onset.get(e.name()) {
                Some(next) if !known(next) => {
                    return Err(missing(
                        next,
                        format!("onset of {e} goes to `{next}`, which does not exist"),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(DataError::at_value(
                        text,
                        "onset",
                        format!("`on.onset` has no node for `{}`", e.name()),
                    ));
                }
            }
        }
        let t = &self.on;
        for (what, next) in [
            ("unsure", &t.unsure),
            ("face_lost", &t.face_lost),
            ("face_found", &t.face_found),
            ("calibration_started", &t.calibration_started),
            ("calibration_done", &t.calibration_done),
        ] {
            if !known(next) {
                return Err(missing(
                    next,
                    format!("`on.{what}` goes to `{next}`, which does not exist"),
                ));
            }
        }
        Ok(())
    }
}

impl DialogueGraph {
    /// The compiled-in dialogue.
    pub fn builtin() -> Result<Self, DataError> {
        Self::parse(BUILTIN)
    }
}

/// What Ada remembers of the player: every expression she noticed, in order.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Expressions noticed (onsets, and the first one seen), newest last.
    pub seen: Vec<Emotion>,
}

impl Memory {
    fn note(&mut self, e: Emotion) {
        if self.seen.last() != Some(&e) {
            self.seen.push(e);
            if self.seen.len() > 100 {
                self.seen.remove(0);
            }
        }
    }

    /// The expression before the current one.
    pub fn previous(&self) -> Option<Emotion> {
        self.seen.len().checked_sub(2).map(|i| self.seen[i])
    }

    /// The expression seen most often.
    pub fn most_seen(&self) -> Option<Emotion> {
        let mut counts: BTreeMap<&str, (usize, Emotion)> = BTreeMap::new();
        for e in &self.seen {
            counts.entry(e.name()).or_insert((0, *e)).0 += 1;
        }
        counts.values().max_by_key(|(n, _)| *n).map(|(_, e)| *e)
    }

    /// `text` with the placeholders filled in.
    pub fn fill(&self, text: &str) -> String {
        let name = |e: Option<Emotion>| e.map_or("hard to read", Emotion::name).to_string();
        text.replace("{player}", &name(self.seen.last().copied()))
            .replace("{previous}", &name(self.previous()))
            .replace("{most_seen}", &name(self.most_seen()))
            .replace("{seen}", &self.seen.len().to_string())
    }
}

/// The conversation's state over a graph.
#[derive(Debug, Clone)]
pub struct Dialogue {
    /// The graph.
    pub graph: Arc<DialogueGraph>,
    /// Current node.
    pub node: String,
    /// The last perceived emotion the agent reacted to.
    pub reacted_to: Option<Emotion>,
    /// How many times the conversation moved on.
    pub steps: u32,
    /// How many of those steps were reactions to the player's face.
    pub reactions: u32,
    /// What was said so far, newest last (agent lines and replies).
    pub history: Vec<String>,
    /// What Ada has seen.
    pub memory: Memory,
    /// Bumped whenever Ada starts a new line (for the speech animation).
    pub line_id: u32,
}

impl Dialogue {
    /// A conversation at the graph's start.
    pub fn new(graph: Arc<DialogueGraph>) -> Self {
        let node = graph.start.clone();
        let mut d = Self {
            graph,
            node,
            reacted_to: None,
            steps: 0,
            reactions: 0,
            history: Vec::new(),
            memory: Memory::default(),
            line_id: 0,
        };
        d.history.push(format!("Ada: {}", d.text()));
        d
    }

    /// The current node (the start node if the current one vanished in a
    /// reload).
    pub fn current(&self) -> &DialogueNode {
        self.graph
            .nodes
            .get(&self.node)
            .or_else(|| self.graph.nodes.get(&self.graph.start))
            .or_else(|| self.graph.nodes.values().next())
            .unwrap_or(&FALLBACK)
    }

    /// What Ada says now, placeholders filled.
    pub fn text(&self) -> String {
        self.memory.fill(&self.current().say)
    }

    /// Ada's expression for the current line.
    pub fn face(&self) -> Option<&str> {
        self.current().face.as_deref()
    }

    /// A new graph (the file changed): the conversation goes on at the same
    /// node if it still exists, else at the start.
    pub fn replace_graph(&mut self, graph: Arc<DialogueGraph>) {
        if !graph.nodes.contains_key(&self.node) {
            self.node = graph.start.clone();
        }
        self.graph = graph;
        self.line_id += 1;
    }

    fn go(&mut self, node: &str) {
        self.node = node.to_owned();
        self.steps += 1;
        self.line_id += 1;
        let line = format!("Ada: {}", self.text());
        self.history.push(line);
        if self.history.len() > 50 {
            self.history.remove(0);
        }
    }

    /// The player's expression is now `e`. Ada reacts when it is new and the
    /// current node is interruptible (a reaction to the same emotion is not
    /// repeated). Returns whether the dialogue advanced.
    pub fn perceive(&mut self, e: Emotion) -> bool {
        self.memory.note(e);
        if self.reacted_to == Some(e) || !self.current().interruptible {
            return false;
        }
        let Some(next) = self.graph.on.onset.get(e.name()).cloned() else {
            return false;
        };
        self.reacted_to = Some(e);
        self.reactions += 1;
        self.go(&next);
        true
    }

    fn event(&mut self, next: String) -> bool {
        if self.node == next || !self.current().interruptible {
            return false;
        }
        self.reacted_to = None;
        self.go(&next);
        true
    }

    /// The player's face cannot be read well: Ada says so (once, until the
    /// player's expression is read again).
    pub fn cannot_see(&mut self) -> bool {
        self.event(self.graph.on.unsure.clone())
    }

    /// The player's face left (`false`) or came back (`true`).
    pub fn presence(&mut self, present: bool) -> bool {
        let t = &self.graph.on;
        self.event(if present {
            t.face_found.clone()
        } else {
            t.face_lost.clone()
        })
    }

    /// Calibration started (`true`) or ended.
    pub fn calibration(&mut self, started: bool) {
        let t = &self.graph.on;
        let next = if started {
            t.calibration_started.clone()
        } else {
            t.calibration_done.clone()
        };
        self.go(&next);
    }

    /// The player picks reply `i` of the current line.
    pub fn reply(&mut self, i: usize) -> bool {
        let Some((text, next)) = self.current().replies.get(i).cloned() else {
            return false;
        };
        self.history.push(format!("You: {text}"));
        self.go(&next);
        true
    }
}

static FALLBACK: DialogueNode = DialogueNode {
    say: String::new(),
    face: None,
    replies: Vec::new(),
    interruptible: true,
};

/// The conversation in progress, and the dialogue asset it follows.
#[derive(Resource)]
pub struct Talk {
    /// The conversation.
    pub dialogue: Dialogue,
    /// The asset (replaces the compiled-in graph once loaded).
    pub handle: Handle<DialogueGraph>,
    /// Why the file on disk was refused, if it was.
    pub error: Option<String>,
}

impl Default for Talk {
    fn default() -> Self {
        let graph = DialogueGraph::builtin().unwrap_or_else(|e| {
            error!("the compiled-in dialogue is broken: {e}");
            DialogueGraph {
                start: "hello".into(),
                nodes: BTreeMap::from([(
                    "hello".into(),
                    DialogueNode {
                        say: "Hello.".into(),
                        ..FALLBACK.clone()
                    },
                )]),
                on: Transitions {
                    onset: BTreeMap::new(),
                    unsure: "hello".into(),
                    face_lost: "hello".into(),
                    face_found: "hello".into(),
                    calibration_started: "hello".into(),
                    calibration_done: "hello".into(),
                },
            }
        });
        Self {
            dialogue: Dialogue::new(Arc::new(graph)),
            handle: Handle::default(),
            error: None,
        }
    }
}

fn load(server: Res<AssetServer>, mut talk: ResMut<Talk>) {
    talk.handle = server.load(PATH);
}

/// The file loaded or changed: the conversation follows the new graph; a
/// broken file keeps the last good one and shows why.
fn reload(
    mut events: MessageReader<AssetEvent<DialogueGraph>>,
    graphs: Res<Assets<DialogueGraph>>,
    server: Res<AssetServer>,
    mut talk: ResMut<Talk>,
) {
    for ev in events.read() {
        if let AssetEvent::Added { id } | AssetEvent::Modified { id } = ev
            && *id == talk.handle.id()
            && let Some(g) = graphs.get(*id)
        {
            info!("dialogue loaded: {} nodes", g.nodes.len());
            talk.dialogue.replace_graph(Arc::new(g.clone()));
            talk.error = None;
        }
    }
    if let Some(bevy::asset::LoadState::Failed(e)) = server.get_load_state(&talk.handle) {
        let msg = e.to_string();
        if talk.error.as_ref() != Some(&msg) {
            warn!("dialogue file refused: {msg}");
            talk.error = Some(msg);
        }
    }
}

/// Ada reacts to each change of the player's emotion (when the topic
/// allows), says when she cannot see the player well, and notices the
/// player leaving and coming back.
fn converse(
    mut changes: MessageReader<PlayerEmotionChanged>,
    mut unsure: MessageReader<PlayerUnsure>,
    mut presence: MessageReader<PlayerPresence>,
    mut talk: ResMut<Talk>,
) {
    if unsure.read().last().is_some() {
        talk.dialogue.cannot_see();
    }
    for p in presence.read() {
        talk.dialogue.presence(p.0);
    }
    for c in changes.read() {
        talk.dialogue.perceive(c.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialogue() -> Dialogue {
        Dialogue::new(Arc::new(DialogueGraph::builtin().unwrap()))
    }

    #[test]
    fn each_emotion_gets_its_own_answer() {
        let mut seen = std::collections::HashSet::new();
        for e in Emotion::FER2013 {
            let mut d = dialogue();
            assert!(d.perceive(e), "{e}");
            seen.insert(d.node.clone());
            assert!(!d.current().replies.is_empty(), "{}", d.node);
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn a_smile_is_noticed_and_a_frown_asked_about() {
        let mut d = dialogue();
        assert!(d.perceive(Emotion::Happy));
        assert!(d.text().contains("smiling"));
        assert_eq!(d.face(), Some("happy"));
        // The same emotion again does not repeat the reaction.
        assert!(!d.perceive(Emotion::Happy));
        assert!(d.reply(0));
        assert_eq!(d.node, "good_day");
        // Mid-topic, a new expression waits until the topic is closed.
        assert!(!d.perceive(Emotion::Sad));
        assert!(d.reply(0));
        assert_eq!(d.node, "listening");
        assert!(d.perceive(Emotion::Sad));
        assert!(d.text().contains("down"));
        assert_eq!((d.steps, d.reactions), (4, 2));
        assert!(!d.reply(7));
    }

    #[test]
    fn she_says_when_she_cannot_see_and_waits_during_calibration() {
        let mut d = dialogue();
        d.calibration(true);
        assert_eq!(d.node, "relax");
        assert!(!d.perceive(Emotion::Happy), "no reaction while calibrating");
        assert!(!d.cannot_see());
        d.calibration(false);
        assert!(d.cannot_see());
        assert!(!d.cannot_see(), "said once");
        assert!(d.perceive(Emotion::Surprise));
        assert_eq!(d.node, "surprise");
    }

    #[test]
    fn she_remembers_and_notices_the_player_leaving() {
        let mut d = dialogue();
        d.perceive(Emotion::Happy);
        d.reply(0);
        d.reply(0);
        d.perceive(Emotion::Sad);
        d.reply(1);
        d.reply(0);
        assert!(d.presence(false));
        assert_eq!(d.node, "away");
        // An expression while she waits moves the conversation on too.
        d.perceive(Emotion::Happy);
        assert_eq!(d.node, "smile");
        assert!(d.presence(false));
        d.memory.note(Emotion::Neutral);
        assert!(d.presence(true));
        assert_eq!(d.node, "welcome_back");
        assert!(d.text().contains("You look neutral now"), "{}", d.text());
        assert!(
            d.text().contains("before, you looked happy"),
            "{}",
            d.text()
        );
        assert_eq!(d.memory.most_seen(), Some(Emotion::Happy));
    }

    #[test]
    fn broken_files_are_refused_with_their_line() {
        let e = DialogueGraph::parse(
            "(\n start: \"hello\",\n nodes: {\n  \"hello\": (say: 3),\n },\n)",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        let bad_target = BUILTIN.replacen("\"good_day\")", "\"no_such_node\")", 1);
        let e = DialogueGraph::parse(&bad_target).unwrap_err();
        let line = bad_target
            .lines()
            .position(|l| l.contains("no_such_node"))
            .unwrap()
            + 1;
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains("no_such_node"), "{e}");
        let no_onset = BUILTIN.replacen("\"fear\": \"fear\",", "", 1);
        let e = DialogueGraph::parse(&no_onset).unwrap_err();
        assert!(e.message.contains("`fear`"), "{e}");
    }

    #[test]
    fn a_reload_keeps_the_conversation_where_it_can() {
        let mut d = dialogue();
        d.perceive(Emotion::Happy);
        let mut g = DialogueGraph::builtin().unwrap();
        g.nodes.get_mut("smile").unwrap().say = "A new smile line.".into();
        d.replace_graph(Arc::new(g.clone()));
        assert_eq!(d.node, "smile");
        assert_eq!(d.text(), "A new smile line.");
        g.nodes.remove("smile");
        g.on.onset.insert("happy".into(), "calm".into());
        d.replace_graph(Arc::new(g));
        assert_eq!(d.node, "hello");
    }

    /// The dialogue file is watched: an edit reaches the running
    /// conversation, a broken edit is refused with its line and the last
    /// good graph stays.
    #[test]
    fn the_dialogue_file_reloads_when_it_changes() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("demo")).unwrap();
        let file = dir.path().join(PATH);
        std::fs::write(&file, BUILTIN).unwrap();
        let mut app = App::new();
        app.add_plugins((
            MinimalPlugins,
            AssetPlugin {
                file_path: dir.path().to_string_lossy().into_owned(),
                watch_for_changes_override: Some(true),
                ..default()
            },
        ))
        .add_message::<PlayerEmotionChanged>()
        .add_message::<PlayerUnsure>()
        .add_message::<PlayerPresence>()
        .add_plugins(DialoguePlugin);
        let until = |app: &mut App, what: &str, done: &dyn Fn(&Talk) -> bool| {
            let start = Instant::now();
            while !done(app.world().resource::<Talk>()) {
                assert!(start.elapsed() < Duration::from_secs(20), "never {what}");
                app.update();
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        until(&mut app, "loaded", &|t| app_loaded(t));
        // Edit the opening line on disk.
        std::fs::write(
            &file,
            BUILTIN.replacen("Hi, I'm Ada.", "Hello again, I'm Ada.", 1),
        )
        .unwrap();
        until(&mut app, "reloaded", &|t| {
            t.dialogue.text().starts_with("Hello again")
        });
        // A broken edit: refused with its line, the conversation goes on.
        std::fs::write(&file, "(\n  start: 3,\n)").unwrap();
        until(&mut app, "refused", &|t| t.error.is_some());
        let talk = app.world().resource::<Talk>();
        assert!(
            talk.error.as_ref().unwrap().contains("line 2"),
            "{:?}",
            talk.error
        );
        assert!(talk.dialogue.text().starts_with("Hello again"));
    }

    fn app_loaded(t: &Talk) -> bool {
        // The asset replaced the compiled-in graph (same text, new line id).
        t.dialogue.line_id > 0
    }
}
