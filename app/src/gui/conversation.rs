//! What a conversation is, as saved: messages (text, image references, the answer's
//! metrics) and the generation settings it runs with.

use std::path::Path;

use pocketvlm_engine::{Message, Role, SamplingParams, StopReason, TurnMetrics};
use serde::{Deserialize, Serialize};

use super::format::now_unix;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Also the file name (`<id>.json`); letters, digits and `-` only.
    pub id: String,
    pub title: String,
    /// The user named it; otherwise the title follows the first message.
    #[serde(default)]
    pub title_is_custom: bool,
    pub created_unix: u64,
    pub updated_unix: u64,
    pub messages: Vec<ChatMessage>,
    pub settings: GenerationSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub text: String,
    /// File names in the store's image folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// For answers: how the turn went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<TurnMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopReason>,
    /// For answers: the model that wrote it (its folder or file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl ChatMessage {
    pub fn user(text: impl Into<String>, images: Vec<String>) -> Self {
        ChatMessage {
            role: Role::User,
            text: text.into(),
            images,
            metrics: None,
            stop: None,
            model: None,
        }
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            text: text.into(),
            images: Vec::new(),
            metrics: None,
            stop: None,
            model: None,
        }
    }
}

/// Sampling and prompt settings of one conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationSettings {
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub max_tokens: usize,
    pub seed: u64,
    pub system_prompt: String,
    /// Sampling follows the loaded model's recommendation (its generation_config.json)
    /// until the user changes it.
    pub follow_model: bool,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        let d = SamplingParams::default();
        GenerationSettings {
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            repetition_penalty: d.repetition_penalty,
            max_tokens: 512,
            seed: 0,
            system_prompt: String::new(),
            follow_model: true,
        }
    }
}

impl GenerationSettings {
    /// Takes the model's recommended sampling (not the length, seed or system prompt).
    pub fn adopt_model_defaults(&mut self, d: &SamplingParams) {
        self.temperature = d.temperature;
        self.top_p = d.top_p;
        self.top_k = d.top_k;
        self.repetition_penalty = d.repetition_penalty;
        self.follow_model = true;
    }

    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.max(0.0),
            top_k: self.top_k,
            top_p: self.top_p.clamp(0.01, 1.0),
            repetition_penalty: self.repetition_penalty.max(0.01),
            seed: self.seed,
            max_tokens: self.max_tokens.max(1),
            ignore_eos: false,
        }
    }
}

impl Conversation {
    pub fn new(id: String, settings: GenerationSettings) -> Self {
        let now = now_unix();
        Conversation {
            id,
            title: "New chat".into(),
            title_is_custom: false,
            created_unix: now,
            updated_unix: now,
            messages: Vec::new(),
            settings,
        }
    }

    /// Gives an untitled conversation the start of its first message as a title.
    pub fn auto_title(&mut self) {
        if self.title_is_custom {
            return;
        }
        if let Some(first) = self.messages.iter().find(|m| m.role == Role::User) {
            let line = first.text.lines().next().unwrap_or("").trim();
            self.title = if line.is_empty() {
                if first.images.is_empty() {
                    "New chat".into()
                } else {
                    "Image".into()
                }
            } else {
                let mut t: String = line.chars().take(40).collect();
                if line.chars().count() > 40 {
                    t.push('…');
                }
                t
            };
        }
    }

    /// The engine's view of the conversation: the system prompt, then every message, with
    /// images as paths inside `image_dir`.
    pub fn engine_messages(&self, image_dir: &Path) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        if !self.settings.system_prompt.trim().is_empty() {
            out.push(Message::system(self.settings.system_prompt.clone()));
        }
        for m in &self.messages {
            let mut msg = Message::new(m.role, m.text.clone());
            msg.images = m.images.iter().map(|n| image_dir.join(n)).collect();
            out.push(msg);
        }
        out
    }

    /// Whether `query` (lower-case) is in the title or any message.
    pub fn matches(&self, query: &str) -> bool {
        query.is_empty()
            || self.title.to_lowercase().contains(query)
            || self
                .messages
                .iter()
                .any(|m| m.text.to_lowercase().contains(query))
    }

    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| !m.images.is_empty())
    }
}

/// A new conversation id: the time and a counter, unique within this process and sortable.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "c{nanos:x}-{:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_follow_the_first_message_until_renamed() {
        let mut c = Conversation::new(new_id(), GenerationSettings::default());
        c.messages.push(ChatMessage::user(
            "What is in this picture of a very long title that goes on?\nmore",
            vec![],
        ));
        c.auto_title();
        assert_eq!(c.title, "What is in this picture of a very long t…");
        c.title = "Mine".into();
        c.title_is_custom = true;
        c.auto_title();
        assert_eq!(c.title, "Mine");
    }

    #[test]
    fn engine_messages_carry_the_system_prompt_and_image_paths() {
        let mut c = Conversation::new(new_id(), GenerationSettings::default());
        c.settings.system_prompt = "Be brief.".into();
        c.messages
            .push(ChatMessage::user("hi", vec!["abc.png".into()]));
        let m = c.engine_messages(Path::new("/data/images"));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, Role::System);
        assert_eq!(m[1].images, vec![Path::new("/data/images/abc.png")]);
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id(), new_id());
    }
}
