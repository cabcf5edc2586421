//! Text: templates, HTML as plain text, and a room's conversation as a transcript.

/// The template environment: no escaping (room names and topics are plain text), and
/// what is undefined renders empty.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env
}

/// Whether a template compiles; why not.
pub fn check_template(template: &str) -> Result<(), String> {
    environment()
        .template_from_str(template)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A template rendered with `context`; a template that fails renders empty (it compiled
/// at start: only a runtime error like a bad filter argument gets here).
pub fn render(template: &str, context: &serde_json::Value) -> String {
    environment()
        .render_str(
            template,
            minijinja::Value::from(minijinja::value::Serde(context)),
        )
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// An HTML message as text: tags out, line breaks kept, entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            rest = &rest[start..];
            break;
        };
        let tag = rest[start + 1..start + end].to_ascii_lowercase();
        let closing = tag.starts_with('/');
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or("");
        if name == "br" || closing && matches!(name, "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3")
        {
            out.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// The room's conversation after `since` (milliseconds since the epoch) as a transcript:
/// one line per message with its time (UTC) and author, files named; and the time of the
/// last message in it.
pub fn transcript(events: &[serde_json::Value], since: i64, bot: &str) -> (String, i64) {
    let mut lines = Vec::new();
    let mut last = since;
    for e in events {
        let ts = e["origin_server_ts"].as_i64().unwrap_or(0);
        let content = &e["content"];
        if e["type"] != "m.room.message" || ts <= since || content["body"].is_null() {
            continue;
        }
        last = last.max(ts);
        let sender = e["sender"].as_str().unwrap_or("someone");
        let who = if sender == bot { "Switchboard" } else { sender };
        let body = content["body"].as_str().unwrap_or_default();
        let said = match content["msgtype"].as_str() {
            Some("m.file" | "m.image" | "m.video" | "m.audio") => format!("sent the file {body}"),
            _ => body.to_string(),
        };
        lines.push(format!("[{}] {who}: {said}", utc(ts)));
    }
    if lines.is_empty() {
        return (String::new(), since);
    }
    let head = format!(
        "Transcript of the ticket's Matrix room ({} messages):\n",
        lines.len()
    );
    (format!("{head}\n{}", lines.join("\n")), last)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc(ms: i64) -> String {
    let [year, month, day, hour, minute, _] = switchboard_connector::utc_fields(ms);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_transcript_has_each_message_since_the_last_with_time_and_author() {
        let said = |ts: i64, sender: &str, content: serde_json::Value| {
            json!({"type": "m.room.message", "origin_server_ts": ts, "sender": sender,
                   "content": content})
        };
        let events = [
            said(
                1_000,
                "@carl:x",
                json!({"msgtype": "m.text", "body": "before"}),
            ),
            json!({"type": "m.room.member", "origin_server_ts": 2_000, "sender": "@carl:x",
                   "content": {"membership": "join"}}),
            said(
                1_796_303_733_000,
                "@carl:x",
                json!({"msgtype": "m.text", "body": "It works"}),
            ),
            said(
                1_796_303_800_000,
                "@bot:x",
                json!({"msgtype": "m.notice", "body": "Closed."}),
            ),
            said(
                1_796_303_860_000,
                "@carl:x",
                json!({"msgtype": "m.file", "body": "log.txt"}),
            ),
        ];
        let (text, last) = transcript(&events, 1_000, "@bot:x");
        assert_eq!(
            text,
            "Transcript of the ticket's Matrix room (3 messages):\n\n\
             [2026-12-03 13:15 UTC] @carl:x: It works\n\
             [2026-12-03 13:16 UTC] Switchboard: Closed.\n\
             [2026-12-03 13:17 UTC] @carl:x: sent the file log.txt"
        );
        assert_eq!(last, 1_796_303_860_000);
        assert_eq!(transcript(&events, last, "@bot:x"), (String::new(), last));
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn html_becomes_text() {
        assert_eq!(
            html_to_text("<p>Hello <b>there</b></p><p>a &amp; b&nbsp;&lt;c&gt;<br/>d</p>"),
            "Hello there\na & b <c>\nd"
        );
    }

    #[test]
    fn templates_render_leniently_and_bad_ones_are_named() {
        assert_eq!(
            render(
                "#{{ ticket.id }} {{ nothing }}",
                &json!({"ticket": {"id": 7}})
            ),
            "#7"
        );
        assert!(check_template("{{ ticket.id").is_err());
    }
}
