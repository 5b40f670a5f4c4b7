//! Conversations and chat templates.
//!
//! Hugging Face checkpoints carry their prompt format as a Jinja template; transformers
//! renders it in a sandboxed jinja2 environment with `trim_blocks` and `lstrip_blocks`, the
//! `loopcontrols` extension, a `raise_exception` function and a `tojson` filter that does
//! not escape HTML. minijinja (with Python-compatible string methods) reproduces that.

pub mod templates;

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Images attached to this message, in order; they come before its text in the prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<std::path::PathBuf>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            images: Vec::new(),
        }
    }

    /// This message with an image attached.
    pub fn with_image(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.images.push(path.into());
        self
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// A compiled-on-demand Jinja chat template with the tokenizer's special tokens.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat_template";

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Templates use it to print today's date in a system prompt. Renders stay
        // deterministic; a fixed neutral date is documented behaviour.
        "01 Jan 2026".to_string()
    });
    env.add_filter("tojson", tojson_python);
    env
}

/// `json.dumps(x, ensure_ascii=False)` as transformers' templates see it: Python's
/// separators (", " and ": "), no HTML escaping.
fn tojson_python(value: Value) -> Result<String, minijinja::Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, &mut out);
    Ok(out)
}

fn write_python_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(item, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

impl ChatTemplate {
    /// Checks that `source` compiles; the error text says where it does not.
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, String> {
        let mut env = environment();
        env.add_template(TEMPLATE_NAME, &source)
            .map_err(|e| e.to_string())?;
        Ok(ChatTemplate {
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            source,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> crate::error::Result<String> {
        let mut env = environment();
        env.add_template(TEMPLATE_NAME, &self.source)
            .map_err(|e| crate::error::Error::Template(e.to_string()))?;
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| crate::error::Error::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| crate::error::Error::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_and_raises() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
            None,
            None,
        )
        .unwrap();
        let s = t.render(&[Message::user("  hi ")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");

        let t = ChatTemplate::new(
            "{{ raise_exception('roles must alternate') }}".into(),
            None,
            None,
        )
        .unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::new("{% if %}".into(), None, None).is_err());
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}".into(), None, None).unwrap();
        let s = t.render(&[Message::user("<a> & é")], false).unwrap();
        assert_eq!(s, r#"{"role": "user", "content": "<a> & é"}"#);
    }
}
