//! Sessionize: each reader's events split into session windows, and the co-occurrence pairs the
//! sessions form.
//!
//! Events are routed by `(portal, user_id)`, so every event of a reader meets that reader's state.
//! An event waits until it is *final* (the frontier has passed its `ts`, so no earlier event of the
//! reader can still arrive); final events are taken per reader in `(ts, event_id)` order. A new
//! session starts where the gap to the previous event exceeds `session_gap`; a session closes once
//! the frontier passes `last_ts + session_gap` (`docs/semantics-notes.md` N10) and becomes a
//! `session` feature.
//!
//! The same pass forms the session's co-occurrence pairs ([`super::cooccurrence`], N15): a first
//! read pairs with the session's most recent articles. Pairs leave counted per co-occurrence bucket
//! ([`PairCount`]), so a popular pair read a thousand times in a batch travels once.
//!
//! State is compact because a busy site has millions of open sessions: a reader exists only while
//! a session is open, as one slot holding the user id inline, the portal as a small index, the
//! running totals and one allocation for the session's articles ([`SessionArticles`]); slots are
//! found through a table of slot numbers and closed by a queue of slot numbers per tick. Events
//! not final yet wait in one buffer per tick, not per reader.
//!
//! Checkpoints write each changed session (keyed by reader), a tombstone for each closed one, and
//! the waiting events as append-only parts of their tick ([`crate::checkpoint::parts`]).
//!
//! ```
//! use pageflow_dataflow::event::CompactEvent;
//! use pageflow_dataflow::intern::Article;
//! use pageflow_dataflow::operators::sessionize::{SessionSpec, SessionizeState};
//!
//! let read = |id: &str, article: &str, ts: u64| CompactEvent {
//!     event_id: id.into(), user_id: "u".into(), article: Article::intern_names("g1", article),
//!     ts, dwell_ms: 0, clicks: 0, scroll_pct: 0,
//! };
//! let gap = 30 * 60_000;
//! let mut state = SessionizeState::new(SessionSpec { gap, slide: 60_000, cooc_slide: 600_000, cooc_recent: 10 });
//! for event in [read("b", "x", 60_000), read("a", "y", 0), read("c", "z", 60_000 + gap + 1)] {
//!     state.insert(event);
//! }
//! let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
//! state.advance(u64::MAX, &mut sessions, &mut pairs); // the end of input: everything is final
//! assert_eq!(sessions.len(), 2);
//! assert_eq!(sessions[0].articles, ["y", "x"]);
//! assert_eq!(pairs.len(), 1); // {x, y}, formed by the read of "x"
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compact_str::CompactString;
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::parts::BucketParts;
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, DeferredChanges, Entry, OperatorStates, Placement,
    StateSize, key_group,
};
use crate::event::CompactEvent;
use crate::features::{SESSION_ARTICLES_MAX, SessionFeature};
use crate::ids::{FastMap, route_hash};
use crate::intern::{Article, Portal};
use crate::stats::JobStats;

use super::cooccurrence::{PairCount, SessionArticles};
use super::held::HeldCapability;

/// The parameters of sessionize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSpec {
    /// `session_gap`.
    pub gap: u64,
    /// The dataflow's tick.
    pub slide: u64,
    /// Co-occurrence buckets: pairs are counted per multiple of this.
    pub cooc_slide: u64,
    /// `cooc_recent`.
    pub cooc_recent: usize,
}

/// What sessionize emits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOutput {
    /// A session that can no longer change.
    Closed(SessionFeature),
    /// Pairs formed by final reads.
    Pairs(PairCount),
}

/// The route of a reader's records: a stable hash of `(portal, user_id)`.
pub fn user_route(portal: &str, user_id: &str) -> u64 {
    route_hash(portal, user_id)
}

/// An open session and its reader.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OpenSession {
    user_id: CompactString,
    articles: SessionArticles,
    start_ts: u64,
    last_ts: u64,
    dwell_ms_total: u64,
    clicks_total: u64,
    views: u32,
    /// Index into the state's portal table.
    portal: u16,
    max_scroll_pct: u8,
    /// Changed since the last checkpoint (and listed in `dirty`).
    dirty: bool,
}

/// The session slots, in chunks of [`SessionSlots::CHUNK`]: a `Vec` would double its allocation
/// as readers arrive and hold up to twice the slots in use, tens of megabytes at a million open
/// sessions; chunks hold at most one partly used chunk more. Indexed as a `Vec` is.
#[derive(Clone, Debug, Default)]
struct SessionSlots {
    chunks: Vec<Box<[Option<OpenSession>]>>,
    len: usize,
}

impl SessionSlots {
    const CHUNK: usize = 4096;

    /// Slots handed out so far (used or free).
    fn len(&self) -> usize {
        self.len
    }

    /// Adds a slot holding `session`.
    fn push(&mut self, session: OpenSession) {
        if self.len == self.chunks.len() * Self::CHUNK {
            self.chunks
                .push((0..Self::CHUNK).map(|_| None).collect::<Box<[_]>>());
        }
        let at = self.len;
        self.len += 1;
        self[at] = Some(session);
    }

    /// Bytes of the chunks (the slots' own size; their heap data is counted apart).
    fn allocated_bytes(&self) -> usize {
        self.chunks.len() * Self::CHUNK * std::mem::size_of::<Option<OpenSession>>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[Option<OpenSession>]>>()
    }
}

impl std::ops::Index<usize> for SessionSlots {
    type Output = Option<OpenSession>;

    fn index(&self, slot: usize) -> &Option<OpenSession> {
        &self.chunks[slot / Self::CHUNK][slot % Self::CHUNK]
    }
}

impl std::ops::IndexMut<usize> for SessionSlots {
    fn index_mut(&mut self, slot: usize) -> &mut Option<OpenSession> {
        &mut self.chunks[slot / Self::CHUNK][slot % Self::CHUNK]
    }
}

/// Events of one tick that are not final yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct WaitingTick {
    events: Vec<CompactEvent>,
    /// `events[..saved]` are in the checkpoint already.
    saved: usize,
}

/// A session as checkpoints hold it (article ids of the reader's portal).
#[derive(Serialize, Deserialize)]
struct SavedSession {
    start_ts: u64,
    last_ts: u64,
    views: u32,
    dwell_ms_total: u64,
    clicks_total: u64,
    max_scroll_pct: u8,
    /// The most recent distinct articles, most recent first, as positions in `distinct`.
    recent: Vec<u32>,
    /// The distinct articles in first-read order.
    distinct: Vec<String>,
}

/// [`SavedSession`] as written: borrowed from the open session, nothing copied (same encoding).
#[derive(Serialize)]
struct SavingSession<'a> {
    start_ts: u64,
    last_ts: u64,
    views: u32,
    dwell_ms_total: u64,
    clicks_total: u64,
    max_scroll_pct: u8,
    recent: Vec<u32>,
    distinct: ArticleIds<'a>,
}

/// Article ids of one portal, serialized as a sequence of strings.
struct ArticleIds<'a>(&'a [Article]);

impl Serialize for ArticleIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|article| article.id()))
    }
}

/// Broadcast keys besides the waiting events' parts.
const WAITING_TAG: u8 = 0;
const PROCESSED_TAG: u8 = 1;

/// Every open session on one worker, and the events waiting to become final.
#[derive(Clone, Debug)]
pub struct SessionizeState {
    spec: SessionSpec,
    portals: Vec<Portal>,
    slots: SessionSlots,
    free: Vec<u32>,
    /// Slot numbers, found by the reader's route.
    index: HashTable<u32>,
    /// Tick → slots whose session may close when the frontier reaches it.
    closing: BTreeMap<u64, Vec<u32>>,
    /// Tick → its events not final yet.
    waiting: BTreeMap<u64, WaitingTick>,
    waiting_parts: BucketParts,
    /// Everything below this was processed.
    processed_until: u64,
    saved_processed_until: u64,
    open: usize,
    /// Heap bytes of the sessions' articles and long user ids.
    heap_bytes: usize,
    dirty: Vec<u32>,
    /// Readers whose session closed since the last checkpoint: `(portal, user_id)`.
    closed: Vec<(u16, CompactString)>,
    /// Pairs formed in the current pass.
    pairs: FastMap<(Article, Article, u64), u32>,
    /// Final events of the current pass, by reader (kept for its capacity).
    finals: Vec<(u64, CompactEvent)>,
    /// Emptied buffers of waiting ticks, reused (a busy tick holds a minute of events: growing a
    /// fresh buffer every tick would copy them and fault fresh pages over and over).
    spare: Vec<Vec<CompactEvent>>,
    /// Changes are tracked for checkpoints.
    tracking: bool,
}

impl SessionizeState {
    /// Empty state.
    pub fn new(spec: SessionSpec) -> Self {
        SessionizeState {
            spec,
            portals: Vec::new(),
            slots: SessionSlots::default(),
            free: Vec::new(),
            index: HashTable::new(),
            closing: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_parts: BucketParts::new(WAITING_TAG),
            processed_until: 0,
            saved_processed_until: 0,
            open: 0,
            heap_bytes: 0,
            dirty: Vec::new(),
            closed: Vec::new(),
            pairs: FastMap::default(),
            finals: Vec::new(),
            spare: Vec::new(),
            tracking: true,
        }
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.open
    }

    /// Whether nothing is held (no open session, no waiting event).
    pub fn is_idle(&self) -> bool {
        self.open == 0 && self.waiting.is_empty()
    }

    /// Adds an on-time, de-duplicated event; it is processed once final.
    pub fn insert(&mut self, event: CompactEvent) {
        let tick = event.ts - event.ts % self.spec.slide;
        let spare = &mut self.spare;
        self.waiting
            .entry(tick)
            .or_insert_with(|| WaitingTick {
                events: spare.pop().unwrap_or_default(),
                saved: 0,
            })
            .events
            .push(event);
    }

    fn portal_index(&mut self, portal: Portal) -> u16 {
        match self.portals.iter().position(|p| *p == portal) {
            Some(index) => index as u16,
            None => {
                self.portals.push(portal);
                (self.portals.len() - 1) as u16
            }
        }
    }

    /// The first tick at which a session with this `last_ts` may close.
    fn close_tick(&self, last_ts: u64) -> u64 {
        let due = last_ts.saturating_add(self.spec.gap);
        (due - due % self.spec.slide).saturating_add(self.spec.slide)
    }

    fn find(&self, route: u64, portal: u16, user_id: &str) -> Option<u32> {
        self.index
            .find(route, |&slot| {
                self.slots[slot as usize]
                    .as_ref()
                    .is_some_and(|s| s.portal == portal && s.user_id == user_id)
            })
            .copied()
    }

    fn route_of(&self, session: &OpenSession) -> u64 {
        user_route(
            self.portals[usize::from(session.portal)].name(),
            &session.user_id,
        )
    }

    /// Opens a slot for a new session.
    fn open_slot(&mut self, route: u64, session: OpenSession) -> u32 {
        self.heap_bytes += session.articles.heap_bytes() + long_id_bytes(&session.user_id);
        let close = self.close_tick(session.last_ts);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(session);
                slot
            }
            None => {
                self.slots.push(session);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        let portals = &self.portals;
        self.index.insert_unique(route, slot, |&s| {
            slots[s as usize].as_ref().map_or(0, |open| {
                user_route(portals[usize::from(open.portal)].name(), &open.user_id)
            })
        });
        self.closing.entry(close).or_default().push(slot);
        self.open += 1;
        slot
    }

    /// Closes the session in `slot`, emitting it; `keep_slot` when the reader goes on with a new
    /// session in the same slot (no tombstone then).
    fn close(&mut self, slot: u32, out: &mut Vec<SessionFeature>) {
        let Some(session) = self.slots[slot as usize].take() else {
            return;
        };
        let route = self.route_of(&session);
        if let Ok(entry) = self.index.find_entry(route, |&s| s == slot) {
            entry.remove();
        }
        self.free.push(slot);
        self.open -= 1;
        self.heap_bytes = self
            .heap_bytes
            .saturating_sub(session.articles.heap_bytes() + long_id_bytes(&session.user_id));
        let portal = self.portals[usize::from(session.portal)];
        out.push(feature(portal, &session));
        if self.tracking {
            self.closed.push((session.portal, session.user_id));
        }
    }

    /// Processes everything below `frontier` (`u64::MAX` at the end of input): final events in
    /// each reader's order, then sessions whose gap has passed. Appends closed sessions and the
    /// pairs formed.
    pub fn advance(
        &mut self,
        frontier: u64,
        sessions: &mut Vec<SessionFeature>,
        pairs: &mut Vec<PairCount>,
    ) {
        let mut finals = std::mem::take(&mut self.finals);
        let keyed =
            |event: CompactEvent| (user_route(event.portal().name(), &event.user_id), event);
        while let Some(mut entry) = self.waiting.first_entry() {
            let tick = *entry.key();
            if tick >= frontier {
                break;
            }
            if tick.saturating_add(self.spec.slide) <= frontier {
                let mut events = entry.remove().events;
                finals.extend(events.drain(..).map(keyed));
                if self.spare.len() < 4 {
                    self.spare.push(events);
                }
                self.waiting_parts.drop_bucket(tick);
            } else {
                // Only part of this tick is final (a frontier between ticks, in tests): what
                // stays is saved again as a new part, the old parts go.
                let waiting = entry.get_mut();
                let (done, rest): (Vec<_>, Vec<_>) =
                    waiting.events.drain(..).partition(|e| e.ts < frontier);
                finals.extend(done.into_iter().map(keyed));
                waiting.events = rest;
                waiting.saved = 0;
                self.waiting_parts.drop_bucket(tick);
                break;
            }
        }
        if !finals.is_empty() {
            // Per reader (by route, then id), each reader's events by (ts, event_id).
            finals.sort_unstable_by(|(ra, a), (rb, b)| {
                (ra, a.portal().name(), &a.user_id, a.ts, &a.event_id).cmp(&(
                    rb,
                    b.portal().name(),
                    &b.user_id,
                    b.ts,
                    &b.event_id,
                ))
            });
            for (route, event) in finals.drain(..) {
                self.apply(route, event, sessions);
            }
        }
        self.finals = finals;
        self.close_due(frontier, sessions);
        self.processed_until = self.processed_until.max(frontier);
        pairs.extend(self.pairs.drain().map(|((a, b, bucket), count)| PairCount {
            a,
            b,
            bucket,
            count,
        }));
    }

    /// Applies one final event of a reader.
    fn apply(&mut self, route: u64, event: CompactEvent, sessions: &mut Vec<SessionFeature>) {
        let spec = self.spec;
        let portal = self.portal_index(event.portal());
        let mut slot = self.find(route, portal, &event.user_id);
        if let Some(existing) = slot
            && self.slots[existing as usize]
                .as_ref()
                .is_some_and(|s| event.ts - s.last_ts > spec.gap)
        {
            self.close(existing, sessions);
            slot = None;
        }
        let slot = match slot {
            Some(slot) => slot,
            None => self.open_slot(
                route,
                OpenSession {
                    user_id: event.user_id,
                    articles: SessionArticles::default(),
                    start_ts: event.ts,
                    last_ts: event.ts,
                    dwell_ms_total: 0,
                    clicks_total: 0,
                    views: 0,
                    portal,
                    max_scroll_pct: 0,
                    dirty: false,
                },
            ),
        };
        let Some(session) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let bucket = event.ts - event.ts % spec.cooc_slide;
        let before = session.articles.heap_bytes();
        let pairs = &mut self.pairs;
        session
            .articles
            .read(event.article, spec.cooc_recent, |a, b| {
                *pairs.entry((a, b, bucket)).or_default() += 1;
            });
        self.heap_bytes = self.heap_bytes + session.articles.heap_bytes() - before;
        session.last_ts = event.ts;
        session.views += 1;
        session.dwell_ms_total += u64::from(event.dwell_ms);
        session.clicks_total += u64::from(event.clicks);
        session.max_scroll_pct = session.max_scroll_pct.max(event.scroll_pct);
        if self.tracking && !session.dirty {
            session.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Closes the sessions whose gap has passed by `frontier`; others are looked at again later.
    fn close_due(&mut self, frontier: u64, sessions: &mut Vec<SessionFeature>) {
        let gap = self.spec.gap;
        if frontier == u64::MAX {
            self.closing.clear();
            for slot in 0..self.slots.len() as u32 {
                self.close(slot, sessions);
            }
            return;
        }
        while let Some(entry) = self.closing.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            for slot in entry.remove() {
                let Some(last_ts) = self.slots[slot as usize].as_ref().map(|s| s.last_ts) else {
                    continue;
                };
                if last_ts.saturating_add(gap) < frontier {
                    self.close(slot, sessions);
                } else {
                    let again = self.close_tick(last_ts).max(frontier.saturating_add(1));
                    self.closing.entry(again).or_default().push(slot);
                }
            }
        }
    }
}

/// Sessions closed and changed since the previous checkpoint, copied out of the state: the
/// numbers of each session, and its articles in one shared list (no allocation per session).
#[derive(Default)]
struct SessionChanges {
    closed: Vec<(Portal, CompactString)>,
    sessions: Vec<CopiedSession>,
    /// Each session's recent articles, then its distinct ones.
    articles: Vec<Article>,
}

/// One open session's numbers; its articles are `recent` then `distinct` entries of
/// [`SessionChanges::articles`] from `first`.
struct CopiedSession {
    portal: Portal,
    user_id: CompactString,
    start_ts: u64,
    last_ts: u64,
    dwell_ms_total: u64,
    clicks_total: u64,
    views: u32,
    max_scroll_pct: u8,
    first: u32,
    recent: u8,
    distinct: u32,
}

impl SessionChanges {
    fn copy(&mut self, portal: Portal, session: &OpenSession) {
        let recent = session.articles.recent();
        let distinct = session.articles.distinct();
        self.sessions.push(CopiedSession {
            portal,
            user_id: session.user_id.clone(),
            start_ts: session.start_ts,
            last_ts: session.last_ts,
            dwell_ms_total: session.dwell_ms_total,
            clicks_total: session.clicks_total,
            views: session.views,
            max_scroll_pct: session.max_scroll_pct,
            first: self.articles.len() as u32,
            recent: recent.len() as u8,
            distinct: distinct.len() as u32,
        });
        self.articles.extend_from_slice(recent);
        self.articles.extend_from_slice(distinct);
    }
}

impl DeferredChanges for SessionChanges {
    fn write(self: Box<Self>, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        // Deletions first: a user whose session closed and who opened another keeps the new one.
        for (portal, user_id) in &self.closed {
            let name = portal.name();
            out.delete(
                Placement::of_route(user_route(name, user_id)),
                &(name, user_id.as_str()),
            )?;
        }
        for session in &self.sessions {
            let name = session.portal.name();
            let first = session.first as usize;
            let split = first + usize::from(session.recent);
            let recent = &self.articles[first..split];
            let distinct = &self.articles[split..split + session.distinct as usize];
            out.put(
                Placement::of_route(user_route(name, &session.user_id)),
                &(name, session.user_id.as_str()),
                &SavingSession {
                    start_ts: session.start_ts,
                    last_ts: session.last_ts,
                    views: session.views,
                    dwell_ms_total: session.dwell_ms_total,
                    clicks_total: session.clicks_total,
                    max_scroll_pct: session.max_scroll_pct,
                    recent: recent
                        .iter()
                        .filter_map(|a| distinct.iter().position(|d| d == a).map(|p| p as u32))
                        .collect(),
                    distinct: ArticleIds(distinct),
                },
            )?;
        }
        Ok(())
    }
}

/// Heap bytes of a user id too long to be stored inline.
fn long_id_bytes(id: &CompactString) -> usize {
    if id.is_heap_allocated() {
        id.capacity().div_ceil(16) * 16
    } else {
        0
    }
}

fn feature(portal: Portal, session: &OpenSession) -> SessionFeature {
    let (portal, user_id) = (portal.name(), session.user_id.as_str());
    let distinct = session.articles.distinct();
    SessionFeature {
        feature_id: SessionFeature::feature_id(portal, user_id, session.start_ts),
        portal: portal.to_string(),
        user_id: user_id.to_string(),
        session_id: SessionFeature::session_id(portal, user_id, session.start_ts),
        start_ts: session.start_ts,
        end_ts: session.last_ts,
        views: u64::from(session.views),
        distinct_articles: distinct.len() as u64,
        dwell_ms_total: session.dwell_ms_total,
        clicks_total: session.clicks_total,
        max_scroll_pct: session.max_scroll_pct,
        articles: distinct
            .iter()
            .take(SESSION_ARTICLES_MAX)
            .map(|a| a.id().to_string())
            .collect(),
    }
}

/// Sessions keyed by reader (`(portal, user_id)` in the reader's key group); waiting events as
/// parts of their tick; how far processing got, per worker and run (a restore takes the largest
/// and drops waiting events below it, which were processed).
impl Checkpointed for SessionizeState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        // Copied out now, encoded once the dataflow has resumed.
        let closed: Vec<(Portal, CompactString)> = std::mem::take(&mut self.closed)
            .into_iter()
            .map(|(portal, user_id)| (self.portals[usize::from(portal)], user_id))
            .collect();
        let mut changes = SessionChanges {
            closed,
            sessions: Vec::with_capacity(self.dirty.len()),
            articles: Vec::new(),
        };
        // In slot order: the copy walks the slots forward instead of jumping about.
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        for slot in dirty {
            let Some(session) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            if !session.dirty {
                continue;
            }
            session.dirty = false;
            changes.copy(self.portals[usize::from(session.portal)], session);
        }
        out.defer(changes)?;
        self.waiting_parts.save_deletes(out)?;
        let unsaved: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, tick)| tick.saved < tick.events.len())
            .map(|(tick, _)| *tick)
            .collect();
        for tick in unsaved {
            if let Some(waiting) = self.waiting.get_mut(&tick) {
                let new = waiting.events[waiting.saved..].to_vec();
                self.waiting_parts.write_later(out, tick, new)?;
                waiting.saved = waiting.events.len();
            }
        }
        if self.processed_until != self.saved_processed_until {
            out.put(
                Placement::Broadcast,
                &(PROCESSED_TAG, out.run(), out.worker() as u32),
                &self.processed_until,
            )?;
            self.saved_processed_until = self.processed_until;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        if self.waiting_parts.is_part(&entry) {
            let tick = self.waiting_parts.restored(&entry)?;
            let events: Vec<CompactEvent> = entry.value()?;
            let owned = events
                .into_iter()
                .filter(|e| entry.owns(user_route(e.portal().name(), &e.user_id)));
            self.waiting.entry(tick).or_default().events.extend(owned);
            return Ok(());
        }
        if entry.placement == Placement::Broadcast {
            let processed: u64 = entry.value()?;
            self.processed_until = self.processed_until.max(processed);
            return Ok(());
        }
        let (portal, user_id): (String, String) = entry.key()?;
        let saved: SavedSession = entry.value()?;
        let portal = Portal::intern(&portal);
        let intern = |ids: &[String]| -> Vec<Article> {
            ids.iter().map(|id| Article::intern(portal, id)).collect()
        };
        let distinct = intern(&saved.distinct);
        let recent: Vec<Article> = saved
            .recent
            .iter()
            .filter_map(|&at| distinct.get(at as usize).copied())
            .collect();
        let articles = SessionArticles::from_parts(&recent, &distinct);
        let portal = self.portal_index(portal);
        let route = user_route(self.portals[usize::from(portal)].name(), &user_id);
        self.open_slot(
            route,
            OpenSession {
                user_id: CompactString::from(user_id),
                articles,
                start_ts: saved.start_ts,
                last_ts: saved.last_ts,
                dwell_ms_total: saved.dwell_ms_total,
                clicks_total: saved.clicks_total,
                views: saved.views,
                portal,
                max_scroll_pct: saved.max_scroll_pct,
                dirty: false,
            },
        );
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        let processed = self.processed_until;
        self.saved_processed_until = processed;
        for waiting in self.waiting.values_mut() {
            // Processed before the checkpoint: its effect is in the sessions already.
            waiting.events.retain(|e| e.ts >= processed);
            waiting.saved = waiting.events.len();
        }
        self.waiting.retain(|_, waiting| !waiting.events.is_empty());
        Ok(())
    }

    fn size(&self) -> StateSize {
        let waiting: usize = self.waiting.values().map(|w| w.events.capacity()).sum();
        let closing: usize = self.closing.values().map(Vec::capacity).sum();
        StateSize {
            bytes: (self.slots.allocated_bytes()
                + self.heap_bytes
                + self.index.allocation_size()
                + closing * 4
                + self.free.capacity() * 4
                + waiting * std::mem::size_of::<CompactEvent>()) as u64,
            entries: self.open as u64,
        }
    }

    fn track_changes(&mut self, on: bool) {
        self.tracking = on;
    }
}

/// Splits each reader's events into sessions and forms co-occurrence pairs.
pub trait Sessionize<'scope> {
    /// Closed sessions and counted pairs, routed by `(portal, user_id)`. The sessions are
    /// checkpointed under `"sessionize"` in `states`.
    fn sessionize(
        self,
        spec: SessionSpec,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, SessionOutput>;
}

impl<'scope> Sessionize<'scope> for StreamVec<'scope, u64, CompactEvent> {
    fn sessionize(
        self,
        spec: SessionSpec,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, SessionOutput> {
        let route = Exchange::new(|event: &CompactEvent| {
            u64::from(key_group(user_route(event.portal().name(), &event.user_id)))
        });
        let state = states.attach("sessionize", SessionizeState::new(spec));
        self.unary_frontier(route, "Sessionize", move |capability, _info| {
            let mut held = HeldCapability::default();
            if !state.borrow().is_idle() {
                held.hold_initial(capability);
            }
            let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
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
                state.advance(frontier_time, &mut sessions, &mut pairs);
                if let Some(cap) = held.get()
                    && !(sessions.is_empty() && pairs.is_empty())
                {
                    let mut session = output.session(cap);
                    session.give_iterator(sessions.drain(..).map(SessionOutput::Closed));
                    session.give_iterator(pairs.drain(..).map(SessionOutput::Pairs));
                }
                sessions.clear();
                pairs.clear();
                if state.is_idle() || frontier_time == u64::MAX {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::StateImage;

    const GAP: u64 = 30 * 60_000;
    const SPEC: SessionSpec = SessionSpec {
        gap: GAP,
        slide: 60_000,
        cooc_slide: 600_000,
        cooc_recent: 10,
    };

    fn read(user: &str, id: &str, article: &str, ts: u64) -> CompactEvent {
        CompactEvent {
            event_id: id.into(),
            user_id: user.into(),
            article: Article::intern_names("g1", article),
            ts,
            dwell_ms: 1_000,
            clicks: 1,
            scroll_pct: 10,
        }
    }

    #[test]
    fn equal_times_are_ordered_by_event_id_and_gaps_split_sessions() {
        let mut state = SessionizeState::new(SPEC);
        state.insert(read("u", "e2", "b", 1_000));
        state.insert(read("u", "e1", "a", 1_000));
        state.insert(read("u", "e3", "c", 1_000 + GAP + 1));
        let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
        state.advance(60_000, &mut sessions, &mut pairs);
        assert!(sessions.is_empty());
        assert_eq!(pairs.len(), 1, "a-b formed");
        assert_eq!(state.open_sessions(), 1);
        state.advance(u64::MAX, &mut sessions, &mut pairs);
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].articles, ["a", "b"], "e1 before e2 at equal ts");
        assert_eq!(sessions[1].start_ts, 1_000 + GAP + 1);
        assert!(state.is_idle());
    }

    #[test]
    fn a_session_closes_once_the_frontier_passes_its_gap() {
        let mut state = SessionizeState::new(SPEC);
        state.insert(read("u", "e1", "a", 0));
        let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
        state.advance(GAP, &mut sessions, &mut pairs);
        assert!(
            sessions.is_empty(),
            "an event at exactly last_ts + gap may still join"
        );
        state.advance(GAP + 60_000, &mut sessions, &mut pairs);
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn sessions_past_a_chunk_of_slots_keep_their_own_numbers() {
        // More readers than one chunk of slots holds, in two waves: the second reuses the first's
        // freed slots and needs new chunks too.
        let readers = SessionSlots::CHUNK * 2 + 10;
        let mut state = SessionizeState::new(SPEC);
        let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
        for wave in 0..2u64 {
            let ts = wave * 10 * GAP;
            let count = readers + wave as usize * SessionSlots::CHUNK;
            for n in 0..count {
                let user = format!("u{wave}-{n}");
                state.insert(read(&user, &format!("{user}-1"), "a", ts));
                state.insert(read(&user, &format!("{user}-2"), "b", ts + n as u64 % 1000));
            }
            state.advance(ts + 60_000, &mut sessions, &mut pairs);
            assert_eq!(state.open_sessions(), count, "wave {wave}");
        }
        state.advance(u64::MAX, &mut sessions, &mut pairs);
        assert_eq!(sessions.len(), readers * 2 + SessionSlots::CHUNK);
        for session in &sessions {
            let n: u64 = session
                .user_id
                .rsplit('-')
                .next()
                .unwrap_or("")
                .parse()
                .unwrap_or(u64::MAX);
            assert_eq!(session.views, 2, "{}", session.user_id);
            assert_eq!(
                session.end_ts - session.start_ts,
                n % 1000,
                "{}",
                session.user_id
            );
        }
        assert!(state.is_idle());
    }

    fn save(state: &mut SessionizeState) -> Vec<crate::checkpoint::Change> {
        let mut changes = Vec::new();
        let mut out = ChangeWriter::new("sessionize", 0, 1, &mut changes);
        state.save_changes(&mut out).unwrap();
        changes
    }

    #[test]
    fn a_restored_state_continues_like_the_original_on_any_worker_count()
    -> Result<(), CheckpointError> {
        let mut original = SessionizeState::new(SPEC);
        let mut image = StateImage::default();
        let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
        for n in 0..40u64 {
            original.insert(read(
                &format!("u{}", n % 7),
                &format!("e{n}"),
                &format!("a{}", n % 5),
                n * 20_000,
            ));
            if n % 9 == 0 {
                original.advance(n * 20_000 - n * 20_000 % 60_000, &mut sessions, &mut pairs);
                image.apply(save(&mut original));
            }
        }
        image.apply(save(&mut original));
        for workers in [1, 3] {
            let mut restored: Vec<SessionizeState> = Vec::new();
            for mut worker in image.split(workers)?.workers {
                let mut state = SessionizeState::new(SPEC);
                if let Some(entries) = worker.take("sessionize") {
                    entries.for_each(|entry| state.restore(entry))?;
                }
                state.finish_restore()?;
                restored.push(state);
            }
            let (mut expected, mut expected_pairs) = (Vec::new(), Vec::new());
            original
                .clone()
                .advance(u64::MAX, &mut expected, &mut expected_pairs);
            let (mut got, mut got_pairs) = (Vec::new(), Vec::new());
            for state in &mut restored {
                state.advance(u64::MAX, &mut got, &mut got_pairs);
            }
            let key = |s: &SessionFeature| s.feature_id.clone();
            expected.sort_by_key(key);
            got.sort_by_key(key);
            assert_eq!(got, expected, "{workers} workers");
            expected_pairs.sort();
            got_pairs.sort();
            assert_eq!(got_pairs, expected_pairs);
            assert!(!got.is_empty());
        }
        Ok(())
    }
}
