//! Sessionize: session windows per `(portal, user_id)`.
//!
//! A user's events, ordered by `(ts, event_id)`, split into sessions wherever the gap between two
//! consecutive events is larger than `session_gap`. Events arrive out of order, so an event is held
//! as *pending* until the frontier passes its `ts`: from then on nothing can arrive before it, and
//! its place in the session is final. Final reads are folded into the user's open session in order;
//! the session closes once the frontier passes `last_ts + session_gap` (no later event can join it).
//!
//! The operator emits every finalized read in session order ([`SessionUpdate::Read`], with whether it
//! starts a session and whether its article is read for the first time in it), and every closed
//! session as a [`SessionFeature`] ([`SessionUpdate::Closed`]). Emitting reads only once final means
//! downstream operators (co-occurrence) never have to retract anything.
//!
//! ```
//! use pageflow_dataflow::operators::sessionize::SessionizeState;
//! use pageflow_dataflow::event::Event;
//!
//! let read = |id: &str, article: &str, ts: u64| Event {
//!     event_id: id.into(), portal: "g1".into(), user_id: "u".into(), article_id: article.into(),
//!     ts, dwell_ms: 0, scroll_pct: 0, clicks: 0,
//! };
//! let gap = 30 * 60_000;
//! let mut state = SessionizeState::new(gap);
//! for event in [read("b", "x", 60_000), read("a", "y", 0), read("c", "z", 60_000 + gap + 1)] {
//!     state.insert(event);
//! }
//! let mut out = Vec::new();
//! state.advance(u64::MAX, &mut out); // the end of input: everything is final
//! let sessions: Vec<_> = out.iter().filter_map(|u| u.closed()).collect();
//! assert_eq!(sessions.len(), 2);
//! assert_eq!(sessions[0].articles, ["y", "x"]);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::entries::{Entry, EntryWriter};
use crate::checkpoint::{CheckpointError, Checkpointed, OperatorStates};
use crate::event::{Event, Id};
use crate::features::{SESSION_ARTICLES_MAX, SessionFeature};
use crate::ids::{FastMap, FastSet, stable_hash};
use crate::stats::JobStats;

/// One output of sessionize.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionUpdate {
    /// A read whose place in its session is final.
    Read(SessionRead),
    /// A session that can no longer change.
    Closed(SessionFeature),
}

impl SessionUpdate {
    /// The closed session, if this is one.
    pub fn closed(&self) -> Option<&SessionFeature> {
        match self {
            SessionUpdate::Closed(session) => Some(session),
            SessionUpdate::Read(_) => None,
        }
    }
}

/// A finalized read, in session order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRead {
    /// The site.
    pub portal: Id,
    /// The reader.
    pub user_id: Id,
    /// The article read.
    pub article_id: Id,
    /// Event time.
    pub ts: u64,
    /// This read starts a new session of the user.
    pub new_session: bool,
    /// The article was not read before in this session.
    pub first_read: bool,
}

/// A session key: `(portal, user_id)`.
pub type UserKey = (Id, Id);

/// The route of a user's records: a stable hash of the key, so every record of a user meets the same
/// state on the same worker.
pub fn user_route(portal: &str, user_id: &str) -> u64 {
    stable_hash([portal.as_bytes(), user_id.as_bytes()])
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingRead {
    article_id: Id,
    dwell_ms: u32,
    scroll_pct: u8,
    clicks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OpenSession {
    start_ts: u64,
    last_ts: u64,
    views: u64,
    distinct: FastSet<Id>,
    articles: Vec<Id>,
    dwell_ms_total: u64,
    clicks_total: u64,
    max_scroll_pct: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct UserSessions {
    key: UserKey,
    /// Reads not yet final, sorted by `(ts, event_id)` (a few at most: those within the
    /// out-of-orderness bound, so a sorted vector beats a tree).
    pending: Vec<((u64, Id), PendingRead)>,
    open: Option<OpenSession>,
    /// The due time this user is queued under (stale queue entries are skipped).
    scheduled: Option<u64>,
}

/// All users' sessions on one worker, and when each needs attention.
///
/// Users live in slots of a vector so that the due-queue holds slot numbers, not keys.
#[derive(Clone, Debug, Default)]
pub struct SessionizeState {
    session_gap: u64,
    slot_of: FastMap<UserKey, u32>,
    slots: Vec<Option<UserSessions>>,
    free_slots: Vec<u32>,
    open_sessions: usize,
    /// `(due, slot)`: the user in the slot has work once the frontier reaches `due`.
    due: BinaryHeap<Reverse<(u64, u32)>>,
}

impl SessionizeState {
    /// Empty state for the given gap.
    pub fn new(session_gap: u64) -> Self {
        SessionizeState {
            session_gap,
            ..Default::default()
        }
    }

    /// Users with pending reads or an open session.
    pub fn users(&self) -> usize {
        self.slot_of.len()
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions
    }

    /// Adds an on-time, de-duplicated event.
    pub fn insert(&mut self, event: Event) {
        let Event {
            event_id,
            portal,
            user_id,
            article_id,
            ts,
            dwell_ms,
            scroll_pct,
            clicks,
        } = event;
        let key = (portal, user_id);
        let slot = match self.slot_of.get(&key) {
            Some(&slot) => slot,
            None => {
                let user = UserSessions {
                    key: key.clone(),
                    pending: Vec::new(),
                    open: None,
                    scheduled: None,
                };
                let slot = match self.free_slots.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = Some(user);
                        slot
                    }
                    None => {
                        self.slots.push(Some(user));
                        (self.slots.len() - 1) as u32
                    }
                };
                self.slot_of.insert(key, slot);
                slot
            }
        };
        let Some(user) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let order = (ts, event_id);
        let position = user
            .pending
            .partition_point(|(existing, _)| *existing < order);
        user.pending.insert(
            position,
            (
                order,
                PendingRead {
                    article_id,
                    dwell_ms,
                    scroll_pct,
                    clicks,
                },
            ),
        );
        // The read is final once the frontier passes ts, i.e. reaches ts + 1.
        let due = ts.saturating_add(1);
        if user.scheduled.is_none_or(|scheduled| due < scheduled) {
            user.scheduled = Some(due);
            self.due.push(Reverse((due, slot)));
        }
    }

    /// Finalizes everything below `frontier` (`u64::MAX` at the end of input), appending outputs.
    pub fn advance(&mut self, frontier: u64, out: &mut Vec<SessionUpdate>) {
        let gap = self.session_gap;
        while let Some(Reverse((due, _))) = self.due.peek() {
            if *due > frontier {
                break;
            }
            let Some(Reverse((due, slot))) = self.due.pop() else {
                break;
            };
            let Some(user) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if user.scheduled != Some(due) {
                continue; // superseded by an earlier entry for the same user
            }
            user.scheduled = None;
            let open_before = usize::from(user.open.is_some());
            advance_user(user, frontier, gap, out);
            self.open_sessions =
                self.open_sessions + usize::from(user.open.is_some()) - open_before;
            let next_due = user
                .pending
                .first()
                .map(|((ts, _), _)| ts.saturating_add(1))
                .into_iter()
                .chain(
                    user.open
                        .as_ref()
                        .map(|s| s.last_ts.saturating_add(gap).saturating_add(1)),
                )
                .min();
            match next_due {
                Some(next) => {
                    user.scheduled = Some(next);
                    self.due.push(Reverse((next, slot)));
                }
                None => {
                    if let Some(user) = self.slots[slot as usize].take() {
                        self.slot_of.remove(&user.key);
                    }
                    self.free_slots.push(slot);
                }
            }
        }
    }
}

/// One entry per user, routed like the user's events; the due-queue is rebuilt from each user's
/// `scheduled` time (the queue's other entries are stale and skipped anyway).
impl Checkpointed for SessionizeState {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        for user in self.slots.iter().flatten() {
            out.keyed(user_route(&user.key.0, &user.key.1), user)?;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        let user: UserSessions = entry.decode()?;
        let slot = self.slots.len() as u32;
        self.open_sessions += usize::from(user.open.is_some());
        if let Some(due) = user.scheduled {
            self.due.push(Reverse((due, slot)));
        }
        self.slot_of.insert(user.key.clone(), slot);
        self.slots.push(Some(user));
        Ok(())
    }
}

/// Finalizes one user's reads below `frontier`.
fn advance_user(user: &mut UserSessions, frontier: u64, gap: u64, out: &mut Vec<SessionUpdate>) {
    let key = &user.key;
    let finals = user.pending.partition_point(|((ts, _), _)| *ts < frontier);
    let pending = if finals == user.pending.len() {
        // All final: give the buffer back, most users wait minutes for their next read.
        std::mem::take(&mut user.pending)
    } else {
        user.pending.drain(..finals).collect()
    };
    for ((ts, _event_id), read) in pending {
        let continues = user
            .open
            .as_ref()
            .is_some_and(|session| ts - session.last_ts <= gap);
        if !continues && let Some(session) = user.open.take() {
            out.push(SessionUpdate::Closed(close(key, session)));
        }
        let session = user.open.get_or_insert_with(|| OpenSession {
            start_ts: ts,
            last_ts: ts,
            views: 0,
            distinct: FastSet::default(),
            articles: Vec::new(),
            dwell_ms_total: 0,
            clicks_total: 0,
            max_scroll_pct: 0,
        });
        let first_read = session.distinct.insert(read.article_id.clone());
        if first_read && session.articles.len() < SESSION_ARTICLES_MAX {
            session.articles.push(read.article_id.clone());
        }
        session.last_ts = ts;
        session.views += 1;
        session.dwell_ms_total += u64::from(read.dwell_ms);
        session.clicks_total += u64::from(read.clicks);
        session.max_scroll_pct = session.max_scroll_pct.max(read.scroll_pct);
        out.push(SessionUpdate::Read(SessionRead {
            portal: key.0.clone(),
            user_id: key.1.clone(),
            article_id: read.article_id,
            ts,
            new_session: !continues,
            first_read,
        }));
    }
    // Closed once the watermark is past last_ts + gap: no later event can join the session.
    if user
        .open
        .as_ref()
        .is_some_and(|session| session.last_ts.saturating_add(gap) < frontier)
        && let Some(session) = user.open.take()
    {
        out.push(SessionUpdate::Closed(close(key, session)));
    }
}

fn close(key: &UserKey, session: OpenSession) -> SessionFeature {
    let (portal, user_id) = key;
    SessionFeature {
        feature_id: SessionFeature::feature_id(portal, user_id, session.start_ts),
        portal: portal.to_string(),
        user_id: user_id.to_string(),
        session_id: SessionFeature::session_id(portal, user_id, session.start_ts),
        start_ts: session.start_ts,
        end_ts: session.last_ts,
        views: session.views,
        distinct_articles: session.distinct.len() as u64,
        dwell_ms_total: session.dwell_ms_total,
        clicks_total: session.clicks_total,
        max_scroll_pct: session.max_scroll_pct,
        articles: session.articles.iter().map(|a| a.to_string()).collect(),
    }
}

/// Splits each user's events into sessions.
pub trait Sessionize<'scope> {
    /// Finalized reads and closed sessions, routed by `(portal, user_id)`. The sessions are
    /// checkpointed under `"sessionize"` in `states`.
    fn sessionize(
        self,
        session_gap: u64,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, SessionUpdate>;
}

impl<'scope> Sessionize<'scope> for StreamVec<'scope, u64, Event> {
    fn sessionize(
        self,
        session_gap: u64,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, SessionUpdate> {
        let route = Exchange::new(|event: &Event| user_route(&event.portal, &event.user_id));
        let state = states.attach("sessionize", SessionizeState::new(session_gap));
        self.unary_frontier(route, "Sessionize", move |capability, _info| {
            let mut held = super::held::HeldCapability::default();
            if state.borrow().users() > 0 {
                held.hold_initial(capability);
            }
            let mut out = Vec::new();
            let mut reported_open = 0u64;
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                input.for_each(|cap, data| {
                    held.hold(&cap);
                    for event in data.drain(..) {
                        state.insert(event);
                    }
                });
                let frontier_time = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                state.advance(frontier_time, &mut out);
                if let Some(cap) = held.get()
                    && !out.is_empty()
                {
                    output.session(cap).give_iterator(out.drain(..));
                }
                out.clear();
                if state.users() == 0 || frontier_time == u64::MAX {
                    held.release();
                } else {
                    held.downgrade(frontier_time);
                }
                let open = state.open_sessions() as u64;
                if open != reported_open {
                    // Keep the gauge exact across workers by adding this worker's change.
                    if open > reported_open {
                        stats
                            .open_sessions
                            .fetch_add(open - reported_open, Ordering::Relaxed);
                    } else {
                        stats
                            .open_sessions
                            .fetch_sub(reported_open - open, Ordering::Relaxed);
                    }
                    reported_open = open;
                }
            }
        })
    }
}
