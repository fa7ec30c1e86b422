//! Interned portals and articles: every id the dataflow keys its state by, stored once per process.
//!
//! A portal has a handful of names and a portal's catalogue a few thousand articles, but every
//! pageview names one of each, and every window bucket, pair count and ranking entry is keyed by
//! them. Interning turns them into [`Portal`] and [`Article`]: one pointer each, `Copy`, compared
//! and hashed by address, so that records moving between operators carry no strings, state keys
//! are eight bytes, and nothing is allocated per event once an article is known.
//!
//! - **One table per process.** Workers are threads of one process and share the table, so an
//!   [`Article`] made on the worker that read the record means the same on the worker its state
//!   lives on. Each thread keeps a cache in front of the shared table, so a known article costs one
//!   hash and one lookup without touching a lock.
//! - **Stable routes.** Each entry carries the stable hash its records are routed by
//!   ([`Article::route`], [`Portal::route`]): the same in every process, on every machine, so a
//!   checkpoint restores onto any number of workers. Interned identity (the address) is never used
//!   for routing, ordering or output.
//! - **Deterministic order.** `Ord` compares the names (`portal`, then `article_id`), never the
//!   address, so rankings and ties do not depend on which worker interned an article first.
//! - **Between processes and in checkpoints** an article travels as its strings (`Serialize`), and
//!   is interned again on the way in.
//! - **Lifetime.** Entries live as long as the process (a news site publishes thousands of articles
//!   a day; a month of them is a few megabytes). [`stats`] reports how many there are and their
//!   bytes, with the operators' state sizes.
//!
//! ```
//! use pageflow_dataflow::intern::{Article, Portal};
//! let g1 = Portal::intern("g1");
//! let a = Article::intern(g1, "g1/politica/noticia-1");
//! assert_eq!(a, Article::intern(Portal::intern("g1"), "g1/politica/noticia-1"));
//! assert_eq!((a.portal().name(), a.id()), ("g1", "g1/politica/noticia-1"));
//! assert!(a < Article::intern(g1, "g1/politica/noticia-2"));
//! ```

use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{OnceLock, RwLock};

use hashbrown::HashTable;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{hash_str, route_hash};

/// A site, interned.
#[derive(Clone, Copy)]
pub struct Portal(&'static PortalEntry);

#[derive(Debug)]
struct PortalEntry {
    name: Box<str>,
    route: u64,
}

/// An article of a portal, interned: `(portal, article_id)`.
#[derive(Clone, Copy)]
pub struct Article(&'static ArticleEntry);

#[derive(Debug)]
struct ArticleEntry {
    portal: Portal,
    id: Box<str>,
    route: u64,
}

/// How many ids are interned, and the bytes they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InternStats {
    /// Distinct portals.
    pub portals: u64,
    /// Distinct `(portal, article_id)`.
    pub articles: u64,
    /// Bytes of the entries, their strings and the shared tables (estimated).
    pub bytes: u64,
}

/// Shards of the shared article table, so that two threads interning new articles rarely wait.
const SHARDS: usize = 16;

struct Registry {
    portals: RwLock<HashTable<&'static PortalEntry>>,
    articles: [RwLock<HashTable<&'static ArticleEntry>>; SHARDS],
    portal_count: AtomicU64,
    article_count: AtomicU64,
    bytes: AtomicU64,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        portals: RwLock::new(HashTable::new()),
        articles: std::array::from_fn(|_| RwLock::new(HashTable::new())),
        portal_count: AtomicU64::new(0),
        article_count: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    })
}

thread_local! {
    /// This thread's cache of the shared tables.
    static CACHE: RefCell<(HashTable<Portal>, HashTable<Article>)> =
        const { RefCell::new((HashTable::new(), HashTable::new())) };
}

/// The route of an article's records: a stable hash of `(portal, article_id)`.
pub fn article_route(portal: &str, article_id: &str) -> u64 {
    route_hash(portal, article_id)
}

/// Bytes an entry holds on the heap besides its table slot: the entry and its string, rounded
/// up as the allocator does.
fn entry_bytes(entry: usize, text: usize) -> u64 {
    let round = |n: usize| n.div_ceil(16) * 16;
    (round(entry) + round(text) + 2 * std::mem::size_of::<usize>()) as u64
}

impl Portal {
    /// The interned portal named `name`.
    pub fn intern(name: &str) -> Portal {
        let route = hash_str(name);
        let cached = CACHE.with(|cache| {
            cache
                .borrow()
                .0
                .find(route, |portal| &*portal.0.name == name)
                .copied()
        });
        if let Some(portal) = cached {
            return portal;
        }
        let portal = Portal::intern_shared(name, route);
        CACHE.with(|cache| {
            cache
                .borrow_mut()
                .0
                .insert_unique(route, portal, |p| p.0.route);
        });
        portal
    }

    fn intern_shared(name: &str, route: u64) -> Portal {
        let registry = registry();
        let find = |table: &HashTable<&'static PortalEntry>| {
            table
                .find(route, |entry| &*entry.name == name)
                .map(|entry| Portal(entry))
        };
        if let Some(portal) = find(&read(&registry.portals)) {
            return portal;
        }
        let mut table = write(&registry.portals);
        if let Some(portal) = find(&table) {
            return portal;
        }
        let entry: &'static PortalEntry = Box::leak(Box::new(PortalEntry {
            name: name.into(),
            route,
        }));
        table.insert_unique(route, entry, |entry| entry.route);
        registry.portal_count.fetch_add(1, AtomicOrdering::Relaxed);
        registry.bytes.fetch_add(
            entry_bytes(std::mem::size_of::<PortalEntry>(), name.len()),
            AtomicOrdering::Relaxed,
        );
        Portal(entry)
    }

    /// The portal's name.
    pub fn name(self) -> &'static str {
        &self.0.name
    }

    /// The stable hash its records are routed by (`hash_str(name)`).
    pub fn route(self) -> u64 {
        self.0.route
    }
}

impl Article {
    /// The interned article `article_id` of `portal`.
    pub fn intern(portal: Portal, article_id: &str) -> Article {
        let route = article_route(portal.name(), article_id);
        let cached = CACHE.with(|cache| {
            cache
                .borrow()
                .1
                .find(route, |article| {
                    article.0.portal == portal && &*article.0.id == article_id
                })
                .copied()
        });
        if let Some(article) = cached {
            return article;
        }
        let article = Article::intern_shared(portal, article_id, route);
        CACHE.with(|cache| {
            cache
                .borrow_mut()
                .1
                .insert_unique(route, article, |a| a.0.route);
        });
        article
    }

    /// The interned article named by strings.
    pub fn intern_names(portal: &str, article_id: &str) -> Article {
        Article::intern(Portal::intern(portal), article_id)
    }

    fn intern_shared(portal: Portal, article_id: &str, route: u64) -> Article {
        let registry = registry();
        let shard = &registry.articles[(route % SHARDS as u64) as usize];
        let find = |table: &HashTable<&'static ArticleEntry>| {
            table
                .find(route, |entry| {
                    entry.portal == portal && &*entry.id == article_id
                })
                .map(|entry| Article(entry))
        };
        if let Some(article) = find(&read(shard)) {
            return article;
        }
        let mut table = write(shard);
        if let Some(article) = find(&table) {
            return article;
        }
        let entry: &'static ArticleEntry = Box::leak(Box::new(ArticleEntry {
            portal,
            id: article_id.into(),
            route,
        }));
        table.insert_unique(route, entry, |entry| entry.route);
        registry.article_count.fetch_add(1, AtomicOrdering::Relaxed);
        registry.bytes.fetch_add(
            entry_bytes(std::mem::size_of::<ArticleEntry>(), article_id.len()),
            AtomicOrdering::Relaxed,
        );
        Article(entry)
    }

    /// The article's portal.
    pub fn portal(self) -> Portal {
        self.0.portal
    }

    /// The article's id, e.g. `g1/politica/noticia-00042`.
    pub fn id(self) -> &'static str {
        &self.0.id
    }

    /// The stable hash its records are routed by ([`article_route`]).
    pub fn route(self) -> u64 {
        self.0.route
    }
}

/// Articles named once in a saved record and referred to by their index there, so that a
/// checkpoint part holding many pairs or windows of few articles writes each id once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ArticleTable {
    names: Vec<Article>,
    #[serde(skip)]
    index: crate::ids::FastMap<Article, u32>,
}

impl ArticleTable {
    /// The index of `article`, adding it if new.
    pub fn index(&mut self, article: Article) -> u32 {
        let names = &mut self.names;
        *self.index.entry(article).or_insert_with(|| {
            names.push(article);
            (names.len() - 1) as u32
        })
    }

    /// The article at `index`, if there is one.
    pub fn get(&self, index: u32) -> Option<Article> {
        self.names.get(index as usize).copied()
    }

    /// How many articles are named.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A poisoned table only means a thread panicked while inserting; the table is still valid.
    lock.read().unwrap_or_else(|poison| poison.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poison| poison.into_inner())
}

/// What is interned in this process so far.
pub fn stats() -> InternStats {
    let registry = registry();
    let table_bytes: usize = registry
        .articles
        .iter()
        .map(|shard| read(shard).allocation_size())
        .sum::<usize>()
        + read(&registry.portals).allocation_size();
    InternStats {
        portals: registry.portal_count.load(AtomicOrdering::Relaxed),
        articles: registry.article_count.load(AtomicOrdering::Relaxed),
        bytes: registry.bytes.load(AtomicOrdering::Relaxed) + table_bytes as u64,
    }
}

impl PartialEq for Portal {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Portal {}

impl Hash for Portal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state);
    }
}

impl Ord for Portal {
    fn cmp(&self, other: &Self) -> Ordering {
        if self == other {
            Ordering::Equal
        } else {
            self.name().cmp(other.name())
        }
    }
}

impl PartialOrd for Portal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Article {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Article {}

impl Hash for Article {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state);
    }
}

impl Ord for Article {
    fn cmp(&self, other: &Self) -> Ordering {
        if self == other {
            Ordering::Equal
        } else {
            (self.portal(), self.id()).cmp(&(other.portal(), other.id()))
        }
    }
}

impl PartialOrd for Article {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Article {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.portal().name(), self.id())
    }
}

impl Serialize for Portal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Portal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Portal::intern(&name))
    }
}

impl Serialize for Article {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.portal().name(), self.id()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Article {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (portal, id) =
            <(std::borrow::Cow<'de, str>, std::borrow::Cow<'de, str>)>::deserialize(deserializer)?;
        Ok(Article::intern_names(&portal, &id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_shared_between_threads_and_ordered_by_name() {
        let here = Article::intern_names("g1", "b");
        let there = std::thread::spawn(|| Article::intern_names("g1", "b"))
            .join()
            .unwrap_or_else(|_| panic!("thread"));
        assert_eq!(here, there);
        let (a, z) = (
            Article::intern_names("ge", "a"),
            Article::intern_names("g1", "z"),
        );
        assert!(z < a, "portal first: g1 < ge");
        assert_eq!(here.route(), article_route("g1", "b"));
        assert_eq!(here.portal().route(), hash_str("g1"));
        assert!(stats().articles >= 3);
    }

    #[test]
    fn articles_travel_as_strings() -> Result<(), bincode::Error> {
        let article = Article::intern_names("g1", "x/y");
        let bytes = bincode::serialize(&article)?;
        assert_eq!(
            bincode::deserialize::<(String, String)>(&bytes)?,
            ("g1".into(), "x/y".into())
        );
        assert_eq!(bincode::deserialize::<Article>(&bytes)?, article);
        Ok(())
    }
}
