//! What the ticket-system sources share (Request Tracker, Zammad, ...): a Matrix room per
//! ticket, kept in line with the ticket, and what members say there written back.
//!
//! A source turns its system's ticket and history into the neutral terms here (a
//! [`plan::Ticket`], [`plan::Change`]s, [`people::Member`]s) and gets back the steps that
//! bring the room in line ([`plan::plan`]); the rest (the room's table, the listener that
//! hears members, the transcript, the owner's power, writing once) works the same for all.

pub mod config;
pub mod kind;
pub mod lookup;
pub mod people;
pub mod plan;
pub mod room;
pub mod select;
pub mod table;
pub mod text;

pub use config::{Comments, RoomConfig};
pub use lookup::Lookup;
pub use people::{Means, Member, PeopleConfig, Person};
pub use plan::{
    Article, Change, File, MERGED, Said, Seen, Step, Ticket, changes_now, plan, plan_queued,
};
pub use room::{Chat, Command, TicketRooms, TicketSystem};
pub use select::Select;
