//! The Redmine connector against a real Redmine (`scripts/redmine.sh`) and a real Synapse:
//! helpdesk requests kept as issues, notes both ways with statuses, private and public
//! notes, files, closes from either side, and nothing lost or written twice across a
//! Switchboard restart and a Redmine outage; issues with rooms of their own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::common::{start, wait_in_room, wait_text};
use crate::harness::{
    self, Db, Switchboard, free_port, repo, shared_peer, suffix, synapse, wait_for,
};

on_both_databases!(
    redmine_requests_as_issues_both_ways,
    redmine_issue_rooms_both_ways,
    redmine_restart_and_outage,
    honoroit_redmine_takeover,
);

/// A Redmine on loopback (`scripts/redmine.sh`): the API keys of `admin` (what Switchboard
/// writes as) and `agent` (Alice Agent, a person working in Redmine).
pub struct Redmine {
    dir: PathBuf,
    pub url: String,
    pub admin_key: String,
    pub agent_key: String,
    pub tracker: u64,
    pub statuses: Value,
    /// What `state.json` says of the rest (`trackers`, `roles`, `custom_fields`, `users`),
    /// by name.
    state: Value,
    http: reqwest::Client,
}

/// The Redmine shared by the tests: the one `scripts/test.sh` starts (named by
/// `SWITCHBOARD_TEST_REDMINE_DIR`; it may still be installing), or one started here.
pub fn redmine() -> &'static Redmine {
    static R: OnceLock<Redmine> = OnceLock::new();
    R.get_or_init(|| {
        shared_peer(
            "SWITCHBOARD_TEST_REDMINE_DIR",
            "redmine",
            true,
            15,
            Redmine::attach,
        )
    })
}

impl Redmine {
    fn script(args: &[&str]) -> bool {
        Command::new(repo().join("scripts/redmine.sh"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Uses the instance running in `dir`, once it answers.
    fn attach(dir: &Path) -> Option<Redmine> {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()?;
        let url = state["url"].as_str()?.to_string();
        std::net::TcpStream::connect(url.strip_prefix("http://")?).ok()?;
        Some(Redmine {
            dir: dir.to_owned(),
            url,
            admin_key: state["admin"]["key"].as_str()?.to_string(),
            agent_key: state["agent"]["key"].as_str()?.to_string(),
            tracker: state["tracker_id"].as_u64()?,
            statuses: state["statuses"].clone(),
            state,
            http: reqwest::Client::new(),
        })
    }

    /// A Redmine of the test's own (to stop and start again), on a free port.
    fn own() -> Result<Redmine> {
        redmine();
        let dir = std::env::temp_dir().join(format!("switchboard-redmine-{}", suffix()));
        let port = free_port().to_string();
        if !Redmine::script(&["start", &dir.to_string_lossy(), &port]) {
            bail!("scripts/redmine.sh start failed");
        }
        Redmine::attach(&dir).context("the new Redmine")
    }

    fn stop(&self) {
        Redmine::script(&["stop", &self.dir.to_string_lossy()]);
    }

    fn start_again(&self) -> Result<()> {
        let port = self.url.rsplit(':').next().unwrap_or_default().to_string();
        if !Redmine::script(&["start", &self.dir.to_string_lossy(), &port]) {
            bail!("scripts/redmine.sh start (again) failed");
        }
        Ok(())
    }

    fn status(&self, name: &str) -> u64 {
        self.statuses[name].as_u64().unwrap_or_default()
    }

    /// The number of a tracker, role, custom field or user (`what`) by name (login).
    fn id(&self, what: &str, name: &str) -> u64 {
        self.state[what][name].as_u64().unwrap_or_default()
    }

    /// A new project with the `Support` and `Bug` trackers and the agent as its manager
    /// (so that issues can be assigned to them); its identifier.
    pub async fn project_with_agent(&self) -> Result<String> {
        let id = self.project().await?;
        let trackers = [self.id("trackers", "Support"), self.id("trackers", "Bug")];
        self.call(
            &self.admin_key,
            reqwest::Method::PUT,
            &format!("/projects/{id}.json"),
            Some(json!({"project": {"tracker_ids": trackers}})),
        )
        .await?;
        self.call(
            &self.admin_key,
            reqwest::Method::POST,
            &format!("/projects/{id}/memberships.json"),
            Some(json!({"membership": {"user_id": self.id("users", "agent"),
                                       "role_ids": [self.id("roles", "Manager")]}})),
        )
        .await?;
        Ok(id)
    }

    /// Creates an issue as the agent; its number.
    pub async fn create(&self, issue: Value) -> Result<u64> {
        let made = self
            .call(
                &self.agent_key,
                reqwest::Method::POST,
                "/issues.json",
                Some(json!({ "issue": issue })),
            )
            .await?;
        made["issue"]["id"]
            .as_u64()
            .context("the new issue's number")
    }

    /// One REST call with `key`; its JSON answer (`null` for none).
    pub async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("X-Redmine-API-Key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("Redmine {method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A new project with the support tracker; its identifier.
    pub async fn project(&self) -> Result<String> {
        let id = format!("p{}", suffix().replace(['-', '_'], "").to_lowercase());
        let id: String = id.chars().take(20).collect();
        self.call(
            &self.admin_key,
            reqwest::Method::POST,
            "/projects.json",
            Some(json!({"project": {"name": id, "identifier": id,
                "tracker_ids": [self.tracker], "enabled_module_names": ["issue_tracking"]}})),
        )
        .await?;
        Ok(id)
    }

    /// The project's issues, oldest first.
    pub async fn issues(&self, project: &str) -> Result<Vec<Value>> {
        let list = self
            .call(
                &self.admin_key,
                reqwest::Method::GET,
                &format!("/issues.json?project_id={project}&status_id=*&sort=id&limit=100"),
                None,
            )
            .await?;
        Ok(list["issues"].as_array().cloned().unwrap_or_default())
    }

    /// An issue with its journals and attachments.
    pub async fn issue(&self, id: u64) -> Result<Value> {
        let v = self
            .call(
                &self.admin_key,
                reqwest::Method::GET,
                &format!("/issues/{id}.json?include=journals,attachments"),
                None,
            )
            .await?;
        Ok(v["issue"].clone())
    }

    /// Changes an issue as the agent (a note, a status, ...).
    pub async fn change(&self, id: u64, change: Value) -> Result<()> {
        self.call(
            &self.agent_key,
            reqwest::Method::PUT,
            &format!("/issues/{id}.json"),
            Some(json!({ "issue": change })),
        )
        .await?;
        Ok(())
    }

    /// Uploads a file as the agent; the token that attaches it.
    pub async fn upload(&self, data: &[u8], name: &str) -> Result<String> {
        let response = self
            .http
            .post(format!("{}/uploads.json?filename={name}", self.url))
            .header("X-Redmine-API-Key", &self.agent_key)
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        let answer: Value = response.json().await?;
        answer["upload"]["token"]
            .as_str()
            .map(String::from)
            .context("an upload token")
    }

    /// Waits until the project has `n` issues; them.
    async fn wait_issues(&self, project: &str, n: usize) -> Result<Vec<Value>> {
        wait_for(&format!("{n} issue(s) in {project}"), || async {
            let issues = self.issues(project).await.ok()?;
            (issues.len() >= n).then_some(issues)
        })
        .await
    }

    /// Waits until the issue's notes satisfy `done`; the notes (author name, text,
    /// private) and the issue.
    async fn wait_notes(
        &self,
        id: u64,
        what: &str,
        done: impl Fn(&[(String, String, bool)]) -> bool,
    ) -> Result<(Vec<(String, String, bool)>, Value)> {
        wait_for(what, || async {
            let issue = self.issue(id).await.ok()?;
            let notes = notes_of(&issue);
            done(&notes).then_some((notes, issue))
        })
        .await
    }
}

/// An issue's notes: (author's name, text, private).
fn notes_of(issue: &Value) -> Vec<(String, String, bool)> {
    issue["journals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["notes"].as_str().is_some_and(|n| !n.is_empty()))
        .map(|j| {
            (
                j["user"]["name"].as_str().unwrap_or_default().to_string(),
                j["notes"].as_str().unwrap_or_default().to_string(),
                j["private_notes"] == true,
            )
        })
        .collect()
}

/// A helpdesk in a new backoffice room of `operator`'s, followed by a Redmine source
/// keeping its requests in `project`.
async fn start_synced(
    db: Db,
    bot: &harness::User,
    operator: &harness::User,
    rm: &Redmine,
    project: &str,
) -> Result<(Switchboard, String)> {
    let backoffice = operator
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id]}))
        .await?;
    let sb = start(
        db,
        bot,
        &format!(
            "\n[sources.help]\nkind = \"matrix_dm\"\n\n[sources.help.matrix_dm]\n\
             backoffice_room = \"{backoffice}\"\n\n\
             [sources.tracker]\nkind = \"redmine\"\n\n[sources.tracker.redmine]\n\
             url = \"{}\"\napi_key = \"{}\"\nproject = \"{project}\"\nhelpdesk = \"help\"\n\
             poll_seconds = 1\n\n[sources.tracker.redmine.statuses]\n\
             customer_wrote = {}\noperator_wrote = {}\ndone = {}\n",
            rm.url,
            rm.admin_key,
            rm.status("New"),
            rm.status("In Progress"),
            rm.status("Closed"),
        ),
    )
    .await?;
    wait_in_room(bot, &backoffice, true).await?;
    Ok((sb, backoffice))
}

/// The thread root of the newest request in the backoffice room whose title has `marker`.
async fn thread_root(operator: &harness::User, backoffice: &str, bot: &str) -> Result<String> {
    wait_for("a request's thread", || async {
        operator
            .timeline(backoffice)
            .await
            .ok()?
            .iter()
            .rev()
            .find(|e| {
                e["sender"] == json!(bot)
                    && e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.starts_with("[OPEN] "))
            })
            .and_then(|e| e["event_id"].as_str().map(String::from))
    })
    .await
}

/// The bodies of the bot's posts in the thread on `root`.
async fn thread_posts(
    operator: &harness::User,
    backoffice: &str,
    bot: &str,
    root: &str,
) -> Vec<String> {
    operator
        .timeline(backoffice)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|e| e["sender"] == json!(bot))
        .filter(|e| e["content"]["m.relates_to"]["event_id"] == json!(root))
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect()
}

fn in_thread(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body,
           "m.relates_to": {"rel_type": "m.thread", "event_id": root,
                            "is_falling_back": true, "m.in_reply_to": {"event_id": root}}})
}

/// A customer's request becomes an issue: their messages and the operator's answers are
/// notes with their statuses, a file is attached; the agent's public note reaches the
/// thread and the customer, a private one only the thread, a status change is a notice, and
/// closing the issue closes the request. A second request is closed with `!ho done`, which
/// closes its issue. Nothing Switchboard wrote comes back.
async fn redmine_requests_as_issues_both_ways(db: Db) -> Result<()> {
    let rm = redmine();
    let project = rm.project().await?;
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (_sb, backoffice) = start_synced(db, &bot, &operator, rm, &project).await?;

    let dm = customer
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                            "invite": [bot.user_id]}))
        .await?;
    customer
        .send(
            &dm,
            json!({"msgtype": "m.text", "body": "My printer is on fire"}),
        )
        .await?;
    let issues = rm.wait_issues(&project, 1).await?;
    let issue = &issues[0];
    let id = issue["id"].as_u64().context("issue id")?;
    let server = customer
        .user_id
        .split_once(':')
        .map(|(_, s)| s)
        .unwrap_or_default();
    let subject = issue["subject"].as_str().unwrap_or_default();
    assert!(
        subject.starts_with(&format!("1st request from {server} (1st by ")),
        "{subject}"
    );
    let root = thread_root(&operator, &backoffice, &bot.user_id).await?;
    let description = issue["description"].as_str().unwrap_or_default();
    assert!(description.contains(&customer.user_id), "{description}");
    assert!(
        description.contains(&format!("https://matrix.to/#/{backoffice}/{root}")),
        "{description}"
    );
    let (notes, issue) = rm
        .wait_notes(id, "the customer's note", |n| !n.is_empty())
        .await?;
    // The customer's display name (their localpart here) and Matrix ID.
    let local = customer.user_id[1..].split(':').next().unwrap_or_default();
    assert_eq!(
        notes[0].1,
        format!(
            "_{local} ({}) (customer)_\n\nMy printer is on fire",
            customer.user_id
        )
    );
    assert_eq!(issue["status"]["name"], "New");

    // The operator answers, with a file too.
    operator
        .send(&backoffice, in_thread(&root, "We are on it"))
        .await?;
    let mxc = operator
        .upload(b"the manual".to_vec(), "text/plain")
        .await?;
    let mut file = json!({"msgtype": "m.file", "body": "manual.txt", "url": mxc,
                          "info": {"mimetype": "text/plain", "size": 10}});
    file["m.relates_to"] = in_thread(&root, "")["m.relates_to"].clone();
    operator.send(&backoffice, file).await?;
    let (notes, issue) = rm
        .wait_notes(id, "the operator's notes", |n| n.len() >= 3)
        .await?;
    assert_eq!(
        notes[1].1,
        format!("_{} (operator)_\n\nWe are on it", operator.user_id)
    );
    assert_eq!(issue["status"]["name"], "In Progress");
    let attachments = issue["attachments"].as_array().cloned().unwrap_or_default();
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    assert_eq!(attachments[0]["filename"], "manual.txt");
    assert_eq!(attachments[0]["filesize"], 10);

    // The agent writes in Redmine: a public note, a private one, a status change.
    rm.change(id, json!({"notes": "A new printer is ordered"}))
        .await?;
    rm.change(
        id,
        json!({"notes": "It was the toner", "private_notes": true}),
    )
    .await?;
    rm.change(id, json!({"status_id": rm.status("New")}))
        .await?;
    let posts = wait_for("the agent's notes in the thread", || async {
        let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root).await;
        posts
            .iter()
            .any(|p| p.contains("set Redmine issue"))
            .then_some(posts)
    })
    .await?;
    let place = format!("Redmine issue #{id}");
    assert!(
        posts.contains(&format!(
            "Alice Agent in {place}:\n\nA new printer is ordered"
        )),
        "{posts:?}"
    );
    assert!(
        posts.contains(&format!(
            "Alice Agent in {place} (private note):\n\nIt was the toner"
        )),
        "{posts:?}"
    );
    assert!(
        posts.contains(&format!("Alice Agent set {place} to New.")),
        "{posts:?}"
    );
    wait_for("the public note at the customer's", || async {
        let m = customer.messages(&dm).await.ok()?;
        m.iter()
            .any(|b| b == "A new printer is ordered")
            .then_some(())
    })
    .await?;

    // A file attached in Redmine reaches the thread and, with a public note, the customer.
    let token = rm.upload(b"the invoice", "invoice.txt").await?;
    rm.change(
        id,
        json!({"notes": "Here is the invoice", "uploads": [
            {"token": token, "filename": "invoice.txt", "content_type": "text/plain"}]}),
    )
    .await?;
    for (reader, room) in [(&operator, &backoffice), (&customer, &dm)] {
        let file = wait_for("the invoice", || async {
            reader.timeline(room).await.ok()?.into_iter().find(|e| {
                e["content"]["msgtype"] == "m.file" && e["content"]["body"] == "invoice.txt"
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mxc = file["content"]["url"]
            .as_str()
            .context("an unencrypted file")?;
        assert_eq!(reader.download(mxc).await?, b"the invoice");
        if room == &backoffice {
            assert_eq!(file["content"]["m.relates_to"]["event_id"], json!(root));
        }
    }

    // Closed in Redmine: the request closes, the customer is told and the bot leaves.
    rm.change(id, json!({"status_id": rm.status("Closed")}))
        .await?;
    wait_in_room(&bot, &dm, false).await?;
    let told = customer.messages(&dm).await?;
    assert!(
        !told.iter().any(|b| b.contains("toner")),
        "a private note stays with the operators: {told:?}"
    );
    let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root).await;
    assert!(
        posts.contains(&format!("Closed in {place} by Alice Agent.")),
        "{posts:?}"
    );
    // Nothing Switchboard wrote came back, and nothing was written twice.
    let echoes = posts
        .iter()
        .filter(|p| p.contains("(customer)") || p.contains("(operator)"));
    assert_eq!(echoes.count(), 0, "{posts:?}");
    let (notes, issue) = rm.wait_notes(id, "the notes", |_| true).await?;
    assert_eq!(notes.len(), 6, "{notes:?}");
    assert_eq!(
        issue["status"]["name"], "Closed",
        "the close wrote no status back"
    );

    // A second request, closed with `!ho done`: its issue is closed with the done text.
    let dm2 = customer
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                            "invite": [bot.user_id]}))
        .await?;
    customer
        .send(
            &dm2,
            json!({"msgtype": "m.text", "body": "And the scanner?"}),
        )
        .await?;
    let issues = rm.wait_issues(&project, 2).await?;
    let second = issues[1]["id"].as_u64().context("issue id")?;
    assert!(
        issues[1]["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("2nd request from {server} (2nd by "))),
        "{}",
        issues[1]["subject"]
    );
    let root2 = wait_for("the second thread", || async {
        let r = thread_root(&operator, &backoffice, &bot.user_id)
            .await
            .ok()?;
        (r != root).then_some(r)
    })
    .await?;
    rm.wait_notes(second, "the second request's note", |n| !n.is_empty())
        .await?;
    operator
        .send(&backoffice, in_thread(&root2, "!ho done"))
        .await?;
    let (notes, issue) = wait_for("the second issue closed", || async {
        let issue = rm.issue(second).await.ok()?;
        (issue["status"]["name"] == "Closed").then(|| (notes_of(&issue), issue))
    })
    .await?;
    assert_eq!(issue["status"]["id"], rm.status("Closed"));
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[1].1.contains("done"), "{notes:?}");
    wait_in_room(&bot, &dm2, false).await?;
    // The close written by Switchboard is not heard back as a close from Redmine.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root2).await;
    assert!(!posts.iter().any(|p| p.contains("Closed in")), "{posts:?}");
    Ok(())
}

/// Issues chosen by tracker and a custom field get a room of their own, named after them,
/// with their assignee (admin) invited: the description, the agent's public and private
/// notes and files appear there; what a member says is a note (a private one after
/// `!ticket comment`), with their file attached, and does not come back; closing the issue
/// closes and renames the room and writes the transcript into the issue. Issues not chosen
/// get no room.
async fn redmine_issue_rooms_both_ways(db: Db) -> Result<()> {
    let rm = redmine();
    let project = rm.project_with_agent().await?;
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let alice = hs.user("alice").await?;
    let sb = start(
        db,
        &bot,
        &format!(
            "\n[sources.tracker]\nkind = \"redmine\"\n\n[sources.tracker.redmine]\n\
             url = \"{}\"\napi_key = \"{}\"\nproject = \"{project}\"\npoll_seconds = 1\n\n\
             [sources.tracker.redmine.rooms.select.fields]\ntracker = [\"Support\"]\n\
             \"fields.Chat\" = [\"yes\"]\n\n\
             [sources.tracker.redmine.rooms.room]\nencrypted = false\n\n\
             [sources.tracker.redmine.rooms.people.users]\nagent = \"{}\"\n",
            rm.url, rm.admin_key, alice.user_id,
        ),
    )
    .await?;
    let (support, bug) = (rm.id("trackers", "Support"), rm.id("trackers", "Bug"));
    let chat = |yes: &str| json!([{"id": rm.id("custom_fields", "Chat"), "value": yes}]);
    let issue = |tracker: u64, subject: &str, yes: &str| {
        json!({"project_id": project, "tracker_id": tracker, "subject": subject,
               "description": "Since 9:00.", "custom_fields": chat(yes),
               "assigned_to_id": rm.id("users", "agent")})
    };
    let not_chat = rm.create(issue(support, "No chat wanted", "no")).await?;
    let a_bug = rm.create(issue(bug, "A bug", "yes")).await?;
    let id = rm.create(issue(support, "Printer on fire", "yes")).await?;

    let room = sb.wait_room_in("tracker", &id.to_string()).await?;
    wait_text(&bot, &room, "Alice Agent opened the ticket:\nSince 9:00.").await?;
    let name = bot.state(&room, "m.room.name").await?.unwrap_or_default();
    assert_eq!(
        name["name"],
        json!(format!("Redmine #{id}: Printer on fire"))
    );
    let power = bot.state(&room, "m.room.power_levels").await?;
    assert_eq!(power.unwrap_or_default()["users"][&alice.user_id], 100);
    alice.join(&room).await?;
    wait_in_room(&alice, &room, true).await?;

    // Redmine -> room: a public note, a private one, a file.
    rm.change(id, json!({"notes": "Toner is ordered"})).await?;
    rm.change(
        id,
        json!({"notes": "It was the toner", "private_notes": true}),
    )
    .await?;
    let token = rm.upload(b"the invoice", "invoice.txt").await?;
    rm.change(
        id,
        json!({"notes": "The invoice", "uploads": [
            {"token": token, "filename": "invoice.txt", "content_type": "text/plain"}]}),
    )
    .await?;
    wait_text(&bot, &room, "Alice Agent replied:\nToner is ordered").await?;
    wait_text(
        &bot,
        &room,
        "Alice Agent commented (internal):\nIt was the toner",
    )
    .await?;
    let file =
        wait_for("the invoice in the room", || async {
            bot.timeline(&room).await.ok()?.into_iter().find(|e| {
                e["content"]["msgtype"] == "m.file" && e["content"]["body"] == "invoice.txt"
            })
        })
        .await?;
    let mxc = file["content"]["url"].as_str().context("a file")?;
    assert_eq!(alice.download(mxc).await?, b"the invoice");

    // Room -> Redmine: a note by Switchboard's user, with a file; after `!ticket comment`,
    // a private note. Neither comes back.
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "Works now, thanks"}),
        )
        .await?;
    let mxc = alice.upload(b"a photo".to_vec(), "text/plain").await?;
    alice
        .send(
            &room,
            json!({"msgtype": "m.file", "body": "photo.txt", "url": mxc,
                   "info": {"mimetype": "text/plain", "size": 7}}),
        )
        .await?;
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "!ticket comment"}),
        )
        .await?;
    wait_text(
        &bot,
        &room,
        "messages here now go to the ticket as internal comments",
    )
    .await?;
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "The code is 1234"}),
        )
        .await?;
    let (notes, issue) = rm
        .wait_notes(id, "the room's notes", |n| {
            n.iter()
                .any(|(_, text, _)| text.contains("The code is 1234"))
        })
        .await?;
    let by_switchboard = |text: &str| {
        notes
            .iter()
            .filter(|(who, t, _)| who == "Redmine Admin" && t.contains(text))
            .map(|(_, t, private)| (t.clone(), *private))
            .collect::<Vec<_>>()
    };
    let works = by_switchboard("Works now, thanks");
    assert_eq!(works.len(), 1, "written once: {notes:?}");
    assert!(
        works[0].0.starts_with("alice") && works[0].0.contains(&alice.user_id),
        "{works:?}"
    );
    assert!(!works[0].1, "a public note");
    assert!(by_switchboard("The code is 1234")[0].1, "a private note");
    assert!(
        notes.iter().all(|(_, t, _)| !t.contains("!ticket")),
        "{notes:?}"
    );
    let attached: Vec<&Value> = issue["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert!(
        attached
            .iter()
            .any(|a| a["filename"] == "photo.txt" && a["filesize"] == 7),
        "{attached:?}"
    );

    // Closed in Redmine: the room is closed and renamed, the transcript is a private note.
    rm.change(id, json!({"status_id": rm.status("Closed")}))
        .await?;
    wait_text(&bot, &room, "it is closed").await?;
    wait_for("the closed name", || async {
        let n = bot.state(&room, "m.room.name").await.ok().flatten()?;
        (n["name"] == json!(format!("[Closed] Redmine #{id}: Printer on fire"))).then_some(())
    })
    .await?;
    let (notes, _) = rm
        .wait_notes(id, "the transcript", |n| {
            n.iter()
                .any(|(_, t, _)| t.starts_with("Transcript of the ticket's Matrix room"))
        })
        .await?;
    let transcript = notes
        .iter()
        .find(|(_, t, _)| t.starts_with("Transcript"))
        .context("the transcript")?;
    assert!(transcript.2, "a private note");
    assert!(
        transcript.1.contains("Works now, thanks"),
        "{}",
        transcript.1
    );
    let posted: Vec<String> = bot
        .timeline(&room)
        .await?
        .into_iter()
        .filter(|e| e["sender"] == json!(bot.user_id))
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect();
    assert!(
        posted.iter().all(|m| !m.contains("Works now")),
        "a room message came back: {posted:?}"
    );
    assert!(
        posted.iter().all(|m| !m.contains("Redmine Admin")),
        "Switchboard's own user is nobody to invite: {posted:?}"
    );
    // Polled: no webhooks, but the rooms' links.
    let hook = sb.http().post(format!("{}/hooks/tracker", sb.base)).send();
    assert_eq!(hook.await?.status().as_u16(), 404);
    for other in [not_chat, a_bug] {
        assert_eq!(
            sb.room_in("tracker", &other.to_string()).await?,
            None,
            "#{other}"
        );
    }
    Ok(())
}

/// Messages written while Redmine is down and while Switchboard is stopped reach the issue
/// once each, and a note written in Redmine meanwhile reaches the thread once.
async fn redmine_restart_and_outage(db: Db) -> Result<()> {
    let rm = Redmine::own()?;
    let project = rm.project().await?;
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let (mut sb, backoffice) = start_synced(db, &bot, &operator, &rm, &project).await?;
    let dm = customer
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                            "invite": [bot.user_id]}))
        .await?;
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "first"}))
        .await?;
    let id = rm.wait_issues(&project, 1).await?[0]["id"]
        .as_u64()
        .context("issue id")?;
    rm.wait_notes(id, "the first note", |n| n.len() == 1)
        .await?;
    let root = thread_root(&operator, &backoffice, &bot.user_id).await?;

    // Redmine goes down; the conversation goes on.
    rm.stop();
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "second"}))
        .await?;
    // The operator answers what they read in the thread.
    wait_for("the second message in the thread", || async {
        let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root).await;
        posts.iter().any(|p| p.ends_with("second")).then_some(())
    })
    .await?;
    operator
        .send(&backoffice, in_thread(&root, "answer"))
        .await?;
    wait_for("the answer at the customer's", || async {
        let m = customer.messages(&dm).await.ok()?;
        m.iter().any(|b| b == "answer").then_some(())
    })
    .await?;
    // Switchboard stops too, a message comes while it is away, and Redmine comes back.
    sb.kill();
    customer
        .send(&dm, json!({"msgtype": "m.text", "body": "third"}))
        .await?;
    rm.start_again()?;
    rm.change(id, json!({"notes": "seen while you were away"}))
        .await?;
    sb.spawn().await?;
    let (notes, _) = rm
        .wait_notes(id, "every message as a note", |n| n.len() >= 5)
        .await?;
    let texts: Vec<&str> = notes
        .iter()
        .filter(|(who, _, _)| who != "Alice Agent")
        .map(|(_, t, _)| t.rsplit("\n\n").next().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["first", "second", "answer", "third"]);
    let heard = wait_for("the agent's note in the thread", || async {
        let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root).await;
        let n = posts
            .iter()
            .filter(|p| p.contains("seen while you were away"))
            .count();
        (n > 0).then_some(posts)
    })
    .await?;
    // Another poll or two: still once each.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root).await;
    let n = posts
        .iter()
        .filter(|p| p.contains("seen while you were away"))
        .count();
    assert_eq!(n, 1, "{heard:?}");
    let (notes, _) = rm.wait_notes(id, "the notes", |_| true).await?;
    assert_eq!(notes.len(), 5, "{notes:?}");
    rm.stop();
    Ok(())
}

/// A Redmine source follows a helpdesk that is configured; the key and its line are named
/// otherwise.
#[test]
fn a_redmine_source_follows_a_configured_helpdesk() {
    let text = "[matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser = \"@bot:x\"\n\
                password = \"p\"\n[sources.help]\nkind = \"matrix_dm\"\n\
                [sources.help.matrix_dm]\nbackoffice_room = \"!ops:x\"\n\
                [sources.hook]\nkind = \"webhook\"\npath_secret = \"0123456789abcdef\"\n\
                [sources.issues]\nkind = \"redmine\"\n[sources.issues.redmine]\n\
                url = \"http://127.0.0.1:9\"\napi_key = \"k\"\nproject = \"p\"\n\
                helpdesk = \"help\"\n";
    assert!(switchboard::config::parse(text).is_ok());
    for (followed, says) in [
        ("desk", "no source `desk` is configured"),
        (
            "hook",
            "`hook` is a `webhook` source, which has nothing to follow",
        ),
        ("issues", "a source cannot follow itself"),
    ] {
        let bad = text.replace("helpdesk = \"help\"", &format!("helpdesk = \"{followed}\""));
        let errs = switchboard::config::parse(&bad).expect_err("a bad helpdesk");
        assert!(
            errs.iter()
                .any(|e| e.key == "sources.issues.redmine.helpdesk"
                    && e.message.contains(says)
                    && e.line == Some(18)),
            "{errs:?}"
        );
    }
}

/// A value sealed as Honoroit's later releases seal account data: `ENCv1[...]` around
/// unpadded base64url of a random nonce and the AES-256-GCM ciphertext, keyed with the
/// 32-byte data secret itself.
fn honoroit_sealed_v1(secret: &str, plain: &str) -> String {
    use aes_gcm::aead::{Aead, KeyInit};
    use base64::Engine as _;
    let nonce: [u8; 12] = rand::random();
    let sealed = aes_gcm::Aes256Gcm::new_from_slice(secret.as_bytes())
        .expect("a 32-byte secret")
        .encrypt(aes_gcm::Nonce::from_slice(&nonce), plain.as_bytes())
        .expect("sealed");
    let mut raw = nonce.to_vec();
    raw.extend(sealed);
    format!(
        "ENCv1[{}]",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// Honoroit's variables with `HONOROIT_REDMINE_*` keep requests in Redmine, and the issue
/// Honoroit kept for an open request (in the bot's account data, sealed) goes on: the
/// customer's next message is a note on it, and of its notes only the one Honoroit had not
/// passed on reaches the thread.
async fn honoroit_redmine_takeover(db: Db) -> Result<()> {
    let rm = redmine();
    let project = rm.project().await?;
    let hs = synapse();
    let bot = hs.user("bot").await?;
    let operator = hs.user("operator").await?;
    let customer = hs.user("customer").await?;
    let backoffice = operator
        .create_room(json!({"preset": "private_chat", "invite": [bot.user_id]}))
        .await?;
    bot.join(&backoffice).await?;
    let chat = customer
        .create_room(json!({"preset": "trusted_private_chat", "is_direct": true,
                            "invite": [bot.user_id]}))
        .await?;
    bot.join(&chat).await?;
    let root = bot
        .send(
            &backoffice,
            json!({"msgtype": "m.notice", "body": "[OPEN] 1st request from localhost (1st by customer)"}),
        )
        .await?;
    // The issue Honoroit made, with a note it passed on and one it had not yet.
    let made = rm
        .call(
            &rm.admin_key,
            reqwest::Method::POST,
            "/issues.json",
            Some(
                json!({"issue": {"project_id": project, "subject": "1st request from localhost",
                                  "description": "Sender: customer"}}),
            ),
        )
        .await?;
    let id = made["issue"]["id"].as_u64().context("issue id")?;
    rm.change(id, json!({"notes": "passed on before"})).await?;
    rm.change(id, json!({"notes": "not passed on yet"})).await?;
    let journals = rm.issue(id).await?["journals"].clone();
    let passed = journals[0]["id"].as_u64().context("journal id")?;

    let secret = "32 bytes of Honoroit data secret";
    let sealed = |k: &str, v: &str| {
        let mut content = serde_json::Map::new();
        content.insert(
            honoroit_sealed_v1(secret, k),
            honoroit_sealed_v1(secret, v).into(),
        );
        Value::Object(content)
    };
    bot.set_account_data(
        &format!("cc.etke.honoroit.mapping.{chat}"),
        sealed("id", &root),
    )
    .await?;
    bot.set_account_data(
        &format!("cc.etke.honoroit.mapping.{root}"),
        sealed("id", &chat),
    )
    .await?;
    bot.set_account_data(
        &format!("cc.etke.honoroit.redmine.{root}"),
        sealed("id", &id.to_string()),
    )
    .await?;
    bot.set_account_data(
        &format!("cc.etke.honoroit.redmine.note.{root}_{passed}"),
        json!({"synced": "true"}),
    )
    .await?;

    let localpart = bot.user_id[1..]
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let port = free_port();
    let sqlite_file = std::env::temp_dir().join(format!("honoroit-{}.db", suffix()));
    let (dialect, dsn) = match db {
        Db::Sqlite => ("sqlite3", sqlite_file.display().to_string()),
        _ => ("postgres", harness::postgres_db().await?),
    };
    let env: Vec<(String, String)> = [
        ("HOMESERVER", hs.base_url.as_str()),
        ("LOGIN", &localpart),
        ("PASSWORD", &bot.password),
        ("ROOMID", &backoffice),
        ("PORT", &port.to_string()),
        ("NOENCRYPTION", "1"),
        ("DATA_SECRET", secret),
        ("DB_DIALECT", dialect),
        ("DB_DSN", &dsn),
        ("REDMINE_HOST", &rm.url),
        ("REDMINE_APIKEY", &rm.admin_key),
        ("REDMINE_PROJECT", &project),
        ("REDMINE_TRACKERID", &rm.tracker.to_string()),
        ("REDMINE_NEWSTATUSID", &rm.status("New").to_string()),
        (
            "REDMINE_INPROGRESSSTATUSID",
            &rm.status("In Progress").to_string(),
        ),
        ("REDMINE_DONESTATUSID", &rm.status("Closed").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("HONOROIT_{k}"), v.to_string()))
    .collect();
    let sb = Switchboard::start_env(env, port).await?;
    wait_for("the takeover", || async {
        sb.log()
            .contains("took over Honoroit's Redmine issues")
            .then_some(())
    })
    .await?;
    customer
        .send(&chat, json!({"msgtype": "m.text", "body": "back again"}))
        .await?;
    let (notes, _) = rm
        .wait_notes(id, "the customer's note on the old issue", |n| n.len() >= 3)
        .await?;
    assert_eq!(
        notes[2].1,
        format!("_{} (🧑‍🦱customer)_\n\nback again", customer.user_id),
        "Honoroit's note"
    );
    // Honoroit polls every minute, and so does its drop-in.
    let posts = tokio::time::timeout(Duration::from_secs(150), async {
        loop {
            let posts = thread_posts(&operator, &backoffice, &bot.user_id, &root).await;
            if posts.iter().any(|p| p.contains("not passed on yet")) {
                return posts;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .context("the note Honoroit had not passed on")?;
    assert!(
        !posts.iter().any(|p| p.contains("passed on before")),
        "{posts:?}"
    );
    assert_eq!(rm.issues(&project).await?.len(), 1, "no new issue");
    let _ = std::fs::remove_file(&sqlite_file);
    Ok(())
}
