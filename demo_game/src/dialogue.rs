//! The conversation: a small dialogue graph whose branches depend on the
//! player's perceived emotion and on the replies they pick. The graph and
//! its state are plain logic, tested headless; [`DialoguePlugin`] drives
//! them from [`PlayerEmotionChanged`] messages.

use bevy::prelude::{App, MessageReader, Plugin, ResMut, Resource, Update};
use bevy_emotion::Emotion;

use crate::{PlayerEmotionChanged, PlayerUnsure};

/// The conversation as a resource, advanced by the player's emotion changes
/// (and by replies, from the UI).
pub struct DialoguePlugin;

impl Plugin for DialoguePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<Talk>().add_systems(Update, converse);
    }
}

/// The conversation in progress.
#[derive(Resource, Default)]
pub struct Talk(pub Dialogue);

/// Ada reacts to each change of the player's emotion (when the topic
/// allows), and says when she cannot see the player well.
fn converse(
    mut changes: MessageReader<PlayerEmotionChanged>,
    mut unsure: MessageReader<PlayerUnsure>,
    mut talk: ResMut<Talk>,
) {
    if unsure.read().last().is_some() {
        talk.0.cannot_see();
    }
    for c in changes.read() {
        talk.0.perceive(c.0);
    }
}

/// A node of the dialogue graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// Opening line, before any expression was seen.
    Hello,
    /// The agent waits for the player's expression to change.
    Listening,
    /// Reaction to a smile.
    Smile,
    /// The smile was about a good day.
    GoodDay,
    /// The smile was politeness.
    Polite,
    /// Reaction to a sad face.
    Frown,
    /// The player is tired.
    Tired,
    /// The player says they are fine.
    Fine,
    /// Reaction to anger.
    Anger,
    /// Breathing together.
    Breathe,
    /// Reaction to surprise.
    Surprise,
    /// Reaction to fear.
    Fear,
    /// Reaction to disgust.
    Disgust,
    /// Reaction to a neutral face.
    Calm,
    /// The plugin cannot read the player's face well (quality gate).
    CantSee,
    /// Calibration: Ada asks for a relaxed face.
    Relax,
    /// Calibration done.
    Calibrated,
}

/// What the agent says at a node, and the replies the player can choose.
pub struct Line {
    /// The agent's words.
    pub text: &'static str,
    /// `(reply, next node)`.
    pub replies: &'static [(&'static str, Node)],
}

/// The graph.
pub fn line(node: Node) -> Line {
    use Node::*;
    let (text, replies): (&str, &[(&str, Node)]) = match node {
        Hello => (
            "Hi, I'm Ada. Let's talk for a minute. I can see your expression, if you let me.",
            &[("Nice to meet you", Listening)],
        ),
        Listening => ("I'm listening. How are you feeling right now?", &[]),
        Smile => (
            "You're smiling! That's lovely to see. Did something good happen today?",
            &[("Yes, a great day", GoodDay), ("Just being polite", Polite)],
        ),
        GoodDay => (
            "I'm glad. Good days are worth noticing. Tell me more whenever you like.",
            &[("Thanks, Ada", Listening)],
        ),
        Polite => (
            "Ha, kind of you. You don't have to smile for me, though.",
            &[("Okay", Listening)],
        ),
        Frown => (
            "You look a little down. Do you want to talk about it?",
            &[("I'm a bit tired", Tired), ("I'm fine, really", Fine)],
        ),
        Tired => (
            "That makes sense. Maybe a short break and a glass of water would help.",
            &[("Good idea", Listening)],
        ),
        Fine => (
            "Alright, I won't push. I'm here if that changes.",
            &[("Thanks", Listening)],
        ),
        Anger => (
            "You seem frustrated. Let's slow down and take one deep breath together.",
            &[("Okay, breathing", Breathe), ("I'm not angry", Listening)],
        ),
        Breathe => (
            "In... and out. Whatever it is, we can look at it calmly.",
            &[("That helped", Listening)],
        ),
        Surprise => (
            "Whoa, something surprised you? Nothing scary here, I promise.",
            &[("Just startled", Listening)],
        ),
        Fear => (
            "You look worried. It's okay: you're safe here, and we can take it slowly.",
            &[("Thanks, Ada", Listening)],
        ),
        Disgust => (
            "Hmm, something you don't like? Tell me what it is, I won't be offended.",
            &[("It's nothing", Listening)],
        ),
        Calm => (
            "You look calm and focused. What would you like to talk about?",
            &[("Just chatting", Listening)],
        ),
        CantSee => (
            "I can't see you very well right now. Could you face the camera, in a bit more light?",
            &[("Better now?", Listening)],
        ),
        Relax => (
            "Before we start: relax your face for a few seconds, so I learn how you look at rest.",
            &[("Skip this", Listening)],
        ),
        Calibrated => (
            "Thanks, I know your resting face now. So, how are you today?",
            &[("Good", Listening)],
        ),
    };
    Line { text, replies }
}

/// Which node reacts to the player showing `e`.
pub fn reaction(e: Emotion) -> Node {
    match e {
        Emotion::Happy => Node::Smile,
        Emotion::Sad => Node::Frown,
        Emotion::Angry => Node::Anger,
        Emotion::Surprise => Node::Surprise,
        Emotion::Fear => Node::Fear,
        Emotion::Disgust | Emotion::Contempt => Node::Disgust,
        Emotion::Neutral | Emotion::Other => Node::Calm,
    }
}

/// The agent's own expression while it answers the player's `e`: it mirrors
/// joy and sadness, stays calm in front of anger and disgust, shows surprise
/// back, and reassures fear with a smile.
pub fn agent_expression(player: Emotion) -> Emotion {
    match player {
        // Mirror joy, and reassure fear with a smile.
        Emotion::Happy | Emotion::Fear => Emotion::Happy,
        Emotion::Sad => Emotion::Sad,
        Emotion::Surprise => Emotion::Surprise,
        // Stay calm in front of anger and disgust.
        Emotion::Angry
        | Emotion::Disgust
        | Emotion::Contempt
        | Emotion::Neutral
        | Emotion::Other => Emotion::Neutral,
    }
}

/// The conversation's state.
#[derive(Debug, Clone)]
pub struct Dialogue {
    /// Current node.
    pub node: Node,
    /// The last perceived emotion the agent reacted to.
    pub reacted_to: Option<Emotion>,
    /// How many times the conversation moved on.
    pub steps: u32,
    /// How many of those steps were reactions to the player's face.
    pub reactions: u32,
    /// What was said so far, newest last (agent lines and replies).
    pub history: Vec<String>,
}

impl Default for Dialogue {
    fn default() -> Self {
        Self {
            node: Node::Hello,
            reacted_to: None,
            steps: 0,
            reactions: 0,
            history: vec![format!("Ada: {}", line(Node::Hello).text)],
        }
    }
}

impl Dialogue {
    fn go(&mut self, node: Node) {
        self.node = node;
        self.steps += 1;
        self.history.push(format!("Ada: {}", line(node).text));
        if self.history.len() > 50 {
            self.history.remove(0);
        }
    }

    /// The player's expression is now `e`. The agent reacts when it is new
    /// and the agent is not in the middle of a topic the player must answer
    /// (a reaction to the same emotion is not repeated). Returns whether the
    /// dialogue advanced.
    pub fn perceive(&mut self, e: Emotion) -> bool {
        if self.reacted_to == Some(e) {
            return false;
        }
        if !self.interruptible() {
            return false;
        }
        self.reacted_to = Some(e);
        self.reactions += 1;
        self.go(reaction(e));
        true
    }

    /// Whether a new observation of the player may change the topic now
    /// (not while the player must answer, nor during calibration).
    fn interruptible(&self) -> bool {
        matches!(
            self.node,
            Node::Hello
                | Node::Listening
                | Node::Calm
                | Node::CantSee
                | Node::Calibrated
                | Node::Smile
                | Node::Frown
                | Node::Anger
                | Node::Surprise
                | Node::Fear
                | Node::Disgust
        )
    }

    /// The player's face cannot be read well: Ada says so (once, until the
    /// player's expression is read again).
    pub fn cannot_see(&mut self) -> bool {
        if self.node == Node::CantSee || !self.interruptible() {
            return false;
        }
        self.reacted_to = None;
        self.go(Node::CantSee);
        true
    }

    /// Calibration started (`true`) or ended.
    pub fn calibration(&mut self, started: bool) {
        self.go(if started {
            Node::Relax
        } else {
            Node::Calibrated
        });
    }

    /// The player picks reply `i` of the current line.
    pub fn reply(&mut self, i: usize) -> bool {
        let Some(&(text, next)) = line(self.node).replies.get(i) else {
            return false;
        };
        self.history.push(format!("You: {text}"));
        self.go(next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_emotion_gets_its_own_answer() {
        let mut seen = std::collections::HashSet::new();
        for e in Emotion::FER2013 {
            let mut d = Dialogue::default();
            assert!(d.perceive(e));
            assert_eq!(d.node, reaction(e));
            seen.insert(d.node);
            assert!(!line(d.node).replies.is_empty());
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn a_smile_is_noticed_and_a_frown_asked_about() {
        let mut d = Dialogue::default();
        assert!(d.perceive(Emotion::Happy));
        assert!(line(d.node).text.contains("smiling"));
        // The same emotion again does not repeat the reaction.
        assert!(!d.perceive(Emotion::Happy));
        assert!(d.reply(0));
        assert_eq!(d.node, Node::GoodDay);
        // Mid-topic, a new expression waits until the topic is closed.
        assert!(!d.perceive(Emotion::Sad));
        assert!(d.reply(0));
        assert_eq!(d.node, Node::Listening);
        assert!(d.perceive(Emotion::Sad));
        assert!(line(d.node).text.contains("down"));
        assert_eq!((d.steps, d.reactions), (4, 2));
        assert!(!d.reply(7));
    }

    #[test]
    fn she_says_when_she_cannot_see_and_waits_during_calibration() {
        let mut d = Dialogue::default();
        d.calibration(true);
        assert_eq!(d.node, Node::Relax);
        assert!(!d.perceive(Emotion::Happy), "no reaction while calibrating");
        assert!(!d.cannot_see());
        d.calibration(false);
        assert!(d.cannot_see());
        assert!(!d.cannot_see(), "said once");
        assert!(d.perceive(Emotion::Happy));
        assert_eq!(d.node, Node::Smile);
    }

    #[test]
    fn the_agent_mirrors_or_answers() {
        assert_eq!(agent_expression(Emotion::Happy), Emotion::Happy);
        assert_eq!(agent_expression(Emotion::Sad), Emotion::Sad);
        assert_eq!(agent_expression(Emotion::Angry), Emotion::Neutral);
        assert_eq!(agent_expression(Emotion::Fear), Emotion::Happy);
    }
}
