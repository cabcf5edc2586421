//! What a relayed message looks like on the other side: reply fallbacks removed, and in the
//! backoffice thread the customer's name and avatar on every message (MSC4144).

use serde_json::{Map, Value, json};

/// The unstable key of MSC4144 per-message profiles, until the MSC is accepted.
pub const PROFILE_KEY: &str = "com.beeper.per_message_profile";

/// Removes a reply fallback from a plain-text body: the quoted lines (`> ...`) a client puts
/// before the reply itself, and the blank line after them.
pub fn strip_plain_fallback(body: &str) -> &str {
    if !body.starts_with('>') {
        return body;
    }
    let mut rest = body;
    while rest.starts_with('>') {
        rest = match rest.split_once('\n') {
            Some((_, after)) => after,
            None => "",
        };
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

/// Removes a reply fallback from an HTML body: the `<mx-reply>` element in front of it.
pub fn strip_html_fallback(html: &str) -> &str {
    let trimmed = html.trim_start();
    if !trimmed.starts_with("<mx-reply>") {
        return html;
    }
    match trimmed.find("</mx-reply>") {
        Some(end) => &trimmed[end + "</mx-reply>".len()..],
        None => html,
    }
}

/// A message's content as it goes to the other side: reply fallbacks stripped; relations
/// (which name events of the other room; the caller adds its own), mentions (nobody is
/// pinged by a relay) and any per-message profile dropped; everything else kept, media URLs
/// and formatting included.
pub fn relayed_content(original: &Map<String, Value>) -> Map<String, Value> {
    let mut content = original.clone();
    content.remove("m.relates_to");
    content.remove("m.mentions");
    content.remove(PROFILE_KEY);
    if let Some(Value::String(body)) = content.get_mut("body") {
        *body = strip_plain_fallback(body).to_string();
    }
    if let Some(Value::String(html)) = content.get_mut("formatted_body") {
        *html = strip_html_fallback(html).to_string();
    }
    content
}

/// Who a message in the backoffice thread speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The customer's user ID: MSC4144's `id`, so clients group the customer's messages.
    pub user_id: String,
    pub displayname: String,
    /// An `mxc://` URL, if the customer has an avatar.
    pub avatar_url: Option<String>,
}

/// Adds the customer's profile to `content`, with the name in front of the text for clients
/// that do not show per-message profiles. Media keep their body (the file name) unchanged.
pub fn with_profile(mut content: Map<String, Value>, profile: &Profile) -> Map<String, Value> {
    let is_text = matches!(
        content.get("msgtype").and_then(Value::as_str),
        Some("m.text" | "m.notice" | "m.emote")
    );
    let mut fields = json!({
        "id": profile.user_id,
        "displayname": profile.displayname,
        "has_fallback": is_text,
    });
    if let Some(url) = profile
        .avatar_url
        .as_deref()
        .filter(|u| u.starts_with("mxc://"))
    {
        fields["avatar_url"] = json!(url);
    }
    if is_text {
        let name = &profile.displayname;
        if let Some(Value::String(body)) = content.get_mut("body") {
            *body = format!("{name}: {body}");
        }
        if let Some(Value::String(html)) = content.get_mut("formatted_body") {
            *html = format!(
                "<strong data-mx-profile-fallback>{}: </strong>{html}",
                escape_html(name)
            );
        }
    }
    content.insert(PROFILE_KEY.into(), fields);
    content
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The thread root's content: the title behind the open or done prefix, as the bot's own
/// message type (`m.notice` unless configured otherwise).
pub fn thread_root(prefix: &str, title: &str, msgtype: &str) -> Map<String, Value> {
    let mut content = Map::new();
    content.insert("msgtype".into(), json!(msgtype));
    content.insert("body".into(), json!(format!("{prefix} {title}")));
    content
}

/// Puts a message into the thread that starts at `root`. Clients without threads see it as
/// a reply to the root (`is_falling_back`).
pub fn in_thread(mut content: Map<String, Value>, root: &str) -> Map<String, Value> {
    content.insert(
        "m.relates_to".into(),
        json!({
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": true,
            "m.in_reply_to": {"event_id": root},
        }),
    );
    content
}

/// An edit of the bot's own message `original` (a thread root renamed or marked done):
/// clients that know edits show `new_content`; others see the starred fallback.
pub fn replacement(original: &str, new_content: Map<String, Value>) -> Map<String, Value> {
    let mut content = Map::new();
    if let Some(msgtype) = new_content.get("msgtype") {
        content.insert("msgtype".into(), msgtype.clone());
    }
    let body = new_content
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or("");
    content.insert("body".into(), json!(format!("* {body}")));
    content.insert("m.new_content".into(), Value::Object(new_content));
    content.insert(
        "m.relates_to".into(),
        json!({"rel_type": "m.replace", "event_id": original}),
    );
    content
}

/// An event about an earlier one: what is relayed about that one's counterpart.
#[derive(Debug, Clone, PartialEq)]
pub enum Related {
    /// An edit (`m.replace`), with the message's new content.
    Edit {
        target: String,
        new_content: Map<String, Value>,
    },
    /// A reaction (`m.annotation`) with its key.
    Reaction { target: String, key: String },
    /// A redaction (`redacts` in the content, where room version 11 puts it).
    Redaction { target: String },
}

impl Related {
    /// What an event of `event_type` with `content` is about, if it is about another event.
    pub fn of(event_type: &str, content: &Map<String, Value>) -> Option<Related> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
        let rel = content.get("m.relates_to").and_then(Value::as_object);
        let rel_type = rel.and_then(|r| r.get("rel_type")).and_then(Value::as_str);
        let target = text(rel.and_then(|r| r.get("event_id")));
        match (event_type, rel_type) {
            ("m.room.redaction", _) => Some(Related::Redaction {
                target: text(content.get("redacts"))?,
            }),
            ("m.reaction", Some("m.annotation")) => Some(Related::Reaction {
                target: target?,
                key: text(rel.and_then(|r| r.get("key")))?,
            }),
            ("m.room.message", Some("m.replace")) => Some(Related::Edit {
                target: target?,
                new_content: content.get("m.new_content")?.as_object()?.clone(),
            }),
            _ => None,
        }
    }

    /// The event it is about.
    pub fn target(&self) -> &str {
        match self {
            Related::Edit { target, .. }
            | Related::Reaction { target, .. }
            | Related::Redaction { target } => target,
        }
    }

    /// The event to send on the other side: its type and content, with the counterpart's
    /// event ID still to be filled into `m.relates_to`. `dress` finishes an edit's new
    /// content (already stripped of relations and fallbacks), e.g. with a profile.
    pub fn relayed(
        self,
        dress: impl FnOnce(Map<String, Value>) -> Map<String, Value>,
    ) -> (&'static str, Map<String, Value>) {
        match self {
            Related::Edit { new_content, .. } => (
                "m.room.message",
                replacement("", dress(relayed_content(&new_content))),
            ),
            Related::Reaction { key, .. } => {
                let mut content = Map::new();
                content.insert(
                    "m.relates_to".into(),
                    json!({"rel_type": "m.annotation", "event_id": "", "key": key}),
                );
                ("m.reaction", content)
            }
            Related::Redaction { .. } => ("m.room.redaction", Map::new()),
        }
    }
}

/// English ordinal of `n`: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 101st, 111th.
pub fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fallback() {
        let body = "> <@op:example.org> How can we help?\n> second line\n\nMy printer is on fire";
        assert_eq!(strip_plain_fallback(body), "My printer is on fire");
        assert_eq!(strip_plain_fallback("no quote"), "no quote");
        // Only a quote at the start is a fallback.
        assert_eq!(strip_plain_fallback("a\n> b"), "a\n> b");
        assert_eq!(strip_plain_fallback("> only a quote"), "");
    }

    #[test]
    fn html_fallback() {
        let html = "<mx-reply><blockquote><a href=\"x\">In reply to</a> hi</blockquote></mx-reply><b>Answer</b>";
        assert_eq!(strip_html_fallback(html), "<b>Answer</b>");
        assert_eq!(strip_html_fallback("<b>plain</b>"), "<b>plain</b>");
        assert_eq!(
            strip_html_fallback("<mx-reply>unclosed"),
            "<mx-reply>unclosed"
        );
    }

    #[test]
    fn relayed_content_keeps_media_and_drops_relations() {
        let original = json!({
            "msgtype": "m.image", "body": "cat.png", "url": "mxc://example.org/abc",
            "info": {"mimetype": "image/png"},
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"},
            "m.mentions": {"user_ids": ["@op:example.org"]},
        });
        let Value::Object(original) = original else {
            unreachable!()
        };
        let out = relayed_content(&original);
        assert_eq!(out.get("url"), Some(&json!("mxc://example.org/abc")));
        assert_eq!(out.get("info"), Some(&json!({"mimetype": "image/png"})));
        assert!(!out.contains_key("m.relates_to"));
        assert!(!out.contains_key("m.mentions"));
    }

    #[test]
    fn profile_with_fallback() {
        let profile = Profile {
            user_id: "@alice:example.org".into(),
            displayname: "Alice <3".into(),
            avatar_url: Some("mxc://example.org/face".into()),
        };
        let Value::Object(text) = json!({"msgtype": "m.text", "body": "hi", "format": "org.matrix.custom.html", "formatted_body": "<i>hi</i>"})
        else {
            unreachable!()
        };
        let out = with_profile(text, &profile);
        assert_eq!(out["body"], json!("Alice <3: hi"));
        assert_eq!(
            out["formatted_body"],
            json!("<strong data-mx-profile-fallback>Alice &lt;3: </strong><i>hi</i>")
        );
        assert_eq!(
            out[PROFILE_KEY],
            json!({"id": "@alice:example.org", "displayname": "Alice <3", "has_fallback": true, "avatar_url": "mxc://example.org/face"})
        );
        let Value::Object(file) =
            json!({"msgtype": "m.file", "body": "report.pdf", "url": "mxc://x/y"})
        else {
            unreachable!()
        };
        let out = with_profile(
            file,
            &Profile {
                avatar_url: Some("https://not-mxc".into()),
                ..profile
            },
        );
        assert_eq!(out["body"], json!("report.pdf"));
        assert_eq!(out[PROFILE_KEY]["has_fallback"], json!(false));
        assert!(out[PROFILE_KEY].get("avatar_url").is_none());
    }

    #[test]
    fn roots_threads_and_edits() {
        let root = thread_root("[OPEN]", "1st request from a.org (1st by A)", "m.notice");
        assert_eq!(
            Value::Object(root.clone()),
            json!({"msgtype": "m.notice", "body": "[OPEN] 1st request from a.org (1st by A)"})
        );
        let Value::Object(text) = json!({"msgtype": "m.text", "body": "hi"}) else {
            unreachable!()
        };
        let threaded = in_thread(text, "$root");
        assert_eq!(threaded["m.relates_to"]["rel_type"], json!("m.thread"));
        assert_eq!(threaded["m.relates_to"]["event_id"], json!("$root"));
        assert_eq!(
            threaded["m.relates_to"]["m.in_reply_to"]["event_id"],
            json!("$root")
        );
        assert_eq!(threaded["body"], json!("hi"));

        let done = replacement(
            "$root",
            thread_root("[DONE]", "Printer on fire", "m.notice"),
        );
        assert_eq!(
            Value::Object(done),
            json!({
                "msgtype": "m.notice",
                "body": "* [DONE] Printer on fire",
                "m.new_content": {"msgtype": "m.notice", "body": "[DONE] Printer on fire"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$root"},
            })
        );
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112]
            .map(ordinal)
            .into();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd",
                "101st", "111th", "112th"
            ]
        );
    }

    #[test]
    fn edits_reactions_and_redactions_are_recognised() {
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let edit = obj(json!({
            "msgtype": "m.text", "body": "* fixed",
            "m.new_content": {"msgtype": "m.text", "body": "fixed",
                              "m.mentions": {"user_ids": ["@x:y"]}},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
        }));
        let related = Related::of("m.room.message", &edit).expect("an edit");
        assert_eq!(related.target(), "$orig");
        let (kind, content) = related.relayed(|mut c| {
            c.insert("dressed".into(), json!(true));
            c
        });
        assert_eq!(kind, "m.room.message");
        assert_eq!(content["body"], "* fixed");
        assert_eq!(
            content["m.new_content"],
            json!({"msgtype": "m.text", "body": "fixed", "dressed": true}),
            "mentions dropped, dressed"
        );
        assert_eq!(content["m.relates_to"]["rel_type"], "m.replace");

        let reaction = obj(json!({
            "m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "👍"},
        }));
        let (kind, content) = Related::of("m.reaction", &reaction)
            .expect("a reaction")
            .relayed(|c| c);
        assert_eq!(kind, "m.reaction");
        assert_eq!(content["m.relates_to"]["key"], "👍");

        let redaction = obj(json!({"redacts": "$gone"}));
        assert_eq!(
            Related::of("m.room.redaction", &redaction),
            Some(Related::Redaction {
                target: "$gone".into()
            })
        );
        // Plain messages, threads and replies are not about another event.
        let reply = obj(json!({"msgtype": "m.text", "body": "hi",
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}));
        assert_eq!(Related::of("m.room.message", &reply), None);
        assert_eq!(Related::of("m.room.redaction", &obj(json!({}))), None);
    }
}
