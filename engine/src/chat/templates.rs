//! The prompt formats of the MobileVLM and Imp repositories (`conversation.py`), which their
//! checkpoints do not carry as Jinja templates. Each renders a conversation exactly as the
//! reference `Conversation.get_prompt()` does, with `<image>\n` before the text of a message
//! for each attached image (LLaVA's convention), ending where the assistant's reply starts.

use super::{Message, Role};
use crate::error::{Error, Result};
use crate::model::spec::PromptTemplate;

/// The placeholder the templates write for an image.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// The system prompt of `conv_vicuna_v1`, `conv_phi2`, `conv_qwen2` and `conv_phi3`.
pub const DEFAULT_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// A message's text with its image placeholders in front.
fn with_placeholders(m: &Message) -> String {
    let mut s = String::new();
    for _ in &m.images {
        s.push_str(IMAGE_PLACEHOLDER);
        s.push('\n');
    }
    s.push_str(&m.content);
    s
}

/// Splits off a leading system message and checks that the rest alternates user,
/// assistant, user, ... and ends with the user (the turn to answer).
fn turns(messages: &[Message]) -> Result<(Option<&str>, &[Message])> {
    let (system, rest) = match messages.first() {
        Some(m) if m.role == Role::System => (Some(m.content.as_str()), &messages[1..]),
        _ => (None, messages),
    };
    for (i, m) in rest.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role != expected {
            return Err(Error::Template(format!(
                "message {} is from the {}, expected the {} (turns must alternate, starting with the user)",
                i + 1,
                m.role.as_str(),
                expected.as_str()
            )));
        }
    }
    if rest.last().map(|m| m.role) != Some(Role::User) {
        return Err(Error::Template(
            "the conversation must end with a user message".into(),
        ));
    }
    Ok((system, rest))
}

/// Renders `messages` with one of the built-in formats (not [`PromptTemplate::Jinja`]).
pub fn render(template: PromptTemplate, messages: &[Message]) -> Result<String> {
    let (given_system, rest) = turns(messages)?;
    let system = given_system.unwrap_or(DEFAULT_SYSTEM);
    let mut out = String::new();
    match template {
        PromptTemplate::BlueLm => {
            // BlueLM's published chat format; no default system prompt.
            out.push_str(given_system.unwrap_or_default());
            for (i, m) in rest.iter().enumerate() {
                if i % 2 == 0 {
                    out.push_str("[|Human|]:");
                    out.push_str(&with_placeholders(m));
                } else {
                    out.push_str("[|AI|]:");
                    out.push_str(&m.content);
                    out.push_str("</s>");
                }
            }
            out.push_str("[|AI|]:");
        }
        PromptTemplate::VicunaV1 => {
            // SeparatorStyle.TWO with sep " " and sep2 "</s>".
            out.push_str(system);
            out.push(' ');
            for (i, m) in rest.iter().enumerate() {
                let role = if i % 2 == 0 { "USER" } else { "ASSISTANT" };
                out.push_str(role);
                out.push_str(": ");
                out.push_str(&with_placeholders(m));
                out.push_str(if i % 2 == 0 { " " } else { "</s>" });
            }
            out.push_str("ASSISTANT:");
        }
        PromptTemplate::ImpQwen2 | PromptTemplate::ImpPhi3 => {
            let (head, user, assistant, end) = if template == PromptTemplate::ImpQwen2 {
                (
                    "<|im_start|>system\n",
                    "\n<|im_start|>user\n",
                    "\n<|im_start|>assistant\n",
                    "<|im_end|>",
                )
            } else {
                (
                    "<|system|>\n",
                    "\n<|user|>\n",
                    "\n<|assistant|>\n",
                    "<|end|>",
                )
            };
            out.push_str(head);
            out.push_str(system);
            out.push_str(end);
            for (i, m) in rest.iter().enumerate() {
                out.push_str(if i % 2 == 0 { user } else { assistant });
                out.push_str(&with_placeholders(m));
                out.push_str(end);
            }
            out.push_str(assistant);
        }
        PromptTemplate::Jinja => {
            return Err(Error::Template(
                "a Jinja template is rendered by ChatTemplate".into(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vicuna_matches_the_reference_layout() {
        let msgs = [
            Message::user("What is it?").with_image("a.png"),
            Message::assistant("A cat."),
            Message::user("Colour?"),
        ];
        let s = render(PromptTemplate::VicunaV1, &msgs).unwrap();
        assert_eq!(
            s,
            format!(
                "{DEFAULT_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"
            )
        );
    }

    #[test]
    fn imp_formats_and_system_override() {
        let msgs = [
            Message::system("Be brief."),
            Message::user("Hi").with_image("a.png"),
        ];
        assert_eq!(
            render(PromptTemplate::ImpQwen2, &msgs).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render(PromptTemplate::ImpPhi3, &msgs).unwrap(),
            "<|system|>\nBe brief.<|end|>\n<|user|>\n<image>\nHi<|end|>\n<|assistant|>\n"
        );
    }

    #[test]
    fn refuses_non_alternating_turns() {
        let msgs = [Message::user("a"), Message::user("b")];
        assert!(matches!(
            render(PromptTemplate::VicunaV1, &msgs),
            Err(Error::Template(_))
        ));
        assert!(render(PromptTemplate::VicunaV1, &[]).is_err());
    }
}
