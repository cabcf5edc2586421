//! Messages too long for one Matrix event (the homeserver refuses events over 64 KiB): the
//! text is cut at a clean boundary with a note, and the whole of it goes along as a file.

use serde_json::Value;

/// The most a message's content may take as JSON. Below the 64 KiB event limit with room
/// for the event's envelope, and for the base64 of end-to-end encryption (4/3 of it).
pub const CONTENT_BUDGET: usize = 40_000;

/// The name of the file that carries a cut message's whole text.
pub const FULL_TEXT_FILE: &str = "message.txt";

/// A message cut to fit: what to send, and the whole text to attach.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub content: Value,
    pub full_text: String,
}

/// `content` cut to `budget` bytes of JSON if it is larger and has a text `body`; `None` if
/// it fits (or has no text to cut). The formatted version is left out of a cut message: an
/// HTML text cut anywhere may not be well-formed.
pub fn fit(content: &Value, budget: usize) -> Option<Cut> {
    if json_len(content) <= budget {
        return None;
    }
    let body = content.get("body")?.as_str()?;
    let note = format!(
        "\n\n[The message was cut here: it is {} characters long. The whole text is in the \
         attached file {FULL_TEXT_FILE}.]",
        body.chars().count()
    );
    let mut map = content.as_object()?.clone();
    map.remove("formatted_body");
    map.remove("format");
    map.insert("body".into(), Value::String(String::new()));
    let bare = json_len(&Value::Object(map.clone()));
    let room = budget.checked_sub(bare + escaped_len(&note))?;
    let kept = clean_prefix(body, room);
    map.insert(
        "body".into(),
        Value::String(format!("{}{note}", kept.trim_end())),
    );
    Some(Cut {
        content: Value::Object(map),
        full_text: body.to_string(),
    })
}

/// The longest start of `text` whose JSON-escaped length is at most `room`, ended at a
/// paragraph, line or word break when one is near enough (in its last fifth).
fn clean_prefix(text: &str, room: usize) -> &str {
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        used += escaped_char_len(c);
        if used > room {
            break;
        }
        end = i + c.len_utf8();
    }
    let prefix = &text[..end];
    if end == text.len() {
        return prefix;
    }
    let near = end - end / 5;
    let at = |pat: &dyn Fn(&str) -> Option<usize>| pat(prefix).filter(|&i| i >= near && i > 0);
    at(&|p| p.rfind("\n\n"))
        .or_else(|| at(&|p| p.rfind('\n')))
        .or_else(|| at(&|p| p.rfind(char::is_whitespace)))
        .map_or(prefix, |i| &prefix[..i])
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// The length of `s` in JSON, without the quotes.
fn escaped_len(s: &str) -> usize {
    s.chars().map(escaped_char_len).sum()
}

fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_messages_are_left_alone() {
        assert_eq!(fit(&json!({"msgtype": "m.text", "body": "hi"}), 100), None);
    }

    #[test]
    fn long_messages_are_cut_at_a_paragraph_with_a_note() {
        let body = format!("{}\n\n{}", "a".repeat(900), "b ".repeat(200));
        let content = json!({"msgtype": "m.text", "body": body, "format": "org.matrix.custom.html",
            "formatted_body": "<p>x</p>", "m.relates_to": {"rel_type": "m.thread"}});
        let cut = fit(&content, 1200).expect("cut");
        assert!(json_len(&cut.content) <= 1200, "{}", json_len(&cut.content));
        let text = cut.content["body"].as_str().expect("body");
        assert!(text.starts_with(&"a".repeat(900)), "{text}");
        assert!(text.contains(&format!("it is {} characters long", body.chars().count())));
        assert!(!text.contains('b'), "cut at the paragraph: {text}");
        assert_eq!(cut.full_text, body);
        assert!(cut.content.get("formatted_body").is_none());
        assert_eq!(cut.content["m.relates_to"]["rel_type"], "m.thread");
    }

    #[test]
    fn text_without_breaks_is_cut_at_a_character() {
        let body = "é\"\u{1}".repeat(5000);
        let cut = fit(&json!({"body": body}), 4000).expect("cut");
        assert!(json_len(&cut.content) <= 4000);
        assert!(json_len(&cut.content) > 3500, "most of the room is used");
    }

    proptest::proptest! {
        /// Whatever the text, a cut message fits its budget and starts with the text's start.
        #[test]
        fn a_cut_message_always_fits(body in "(?s).{0,3000}", budget in 300usize..2500) {
            let content = json!({"msgtype": "m.text", "body": body});
            match fit(&content, budget) {
                None => proptest::prop_assert!(json_len(&content) <= budget),
                Some(cut) => {
                    proptest::prop_assert!(json_len(&cut.content) <= budget);
                    let text = cut.content["body"].as_str().unwrap_or_default();
                    let kept = text.split("\n\n[The message was cut here").next().unwrap_or_default();
                    proptest::prop_assert!(body.starts_with(kept));
                    proptest::prop_assert_eq!(&cut.full_text, &body);
                }
            }
        }
    }
}
