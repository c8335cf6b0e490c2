//! Channel namespaces: what a channel may do (keep history, recover,
//! presence, join/leave, client publishing, priority, a subscriber cap,
//! live story collaboration), looked up from its name.
//!
//! A channel `ns:name` takes the options of namespace `ns`; a channel
//! without `ns:` takes those of the namespace named `default`, which always
//! exists (with [`NamespaceOptions::default`] unless configured). A channel
//! whose namespace is not configured also takes the `default` options, or,
//! when namespaces are strict, resolves to nothing and the router refuses it
//! (error 102, unknown channel).
//!
//! Built once at start and shared read-only by every shard. The engine does
//! not know the config types: `Namespaces::from_config` (in `config.rs`)
//! turns the `[[namespace]]` tables into the plain values [`Namespaces::new`]
//! takes, and the option checks live here so that both agree.

use std::collections::HashMap;
use std::fmt;

use crate::engine::channel;
use crate::engine::collab::CollabConfig;

/// The namespace for channels without `ns:`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How urgently a namespace's publications are delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Delivered in turn with everything else.
    #[default]
    Normal,
    /// Goes ahead of normal publications where the node queues them.
    High,
}

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SubscribeMode {
    /// Any connected client.
    #[default]
    Public,
    /// Connections with a user (not anonymous).
    Authenticated,
    /// Connections that present a subscription token for the channel.
    Token,
    /// Nobody by request: only server-side subscriptions (connect claims,
    /// personal channels, the server API).
    Server,
}

/// The options of one namespace. Defaults (reasons in `config.rs` and
/// docs/OPERATIONS.md): no history, no recovery, no presence, no join/leave
/// (capped at 1000 subscribers when on), clients may publish, normal
/// priority, no subscriber cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// Publications kept per channel (0 = none).
    pub history_size: usize,
    /// How long a channel's history is kept after its last publication, in
    /// milliseconds (0 = none).
    pub history_ttl_ms: u64,
    /// Whether subscribers may recover missed publications from history.
    pub recover: bool,
    /// Whether the channel tracks who is subscribed.
    pub presence: bool,
    /// Whether subscribers get join/leave pushes.
    pub join_leave: bool,
    /// Join/leave pushes stop above this many subscribers (0 = no cap);
    /// presence stays exact.
    pub join_leave_max_subscribers: usize,
    /// Whether clients may publish (false: only the server API).
    pub client_publish: bool,
    /// Delivery priority of the namespace's publications.
    pub priority: Priority,
    /// Subscribers a channel may have across the node (0 = unlimited).
    pub max_subscribers: usize,
    /// Who may subscribe.
    pub subscribe: SubscribeMode,
    /// `Some` when the namespace's channels are live stories
    /// (`collaboration = true`), with their limits and conflict policy.
    pub collab: Option<CollabConfig>,
    /// Where the history is kept (`history_backend`).
    pub history_backend: HistoryBackend,
    /// Every accepted publication is also a durable event
    /// ([`crate::engine::durable::DurableEvent::Publication`]), made by the
    /// home before it accepts the publication: a sink that cannot take it
    /// makes the publish fail with 112 instead. The sink itself is the
    /// shell's (`durable = "jetstream:…" | "kafka:…"`, issue 11).
    pub durable: bool,
    /// Every presence join and leave is also a durable event
    /// ([`crate::engine::durable::DurableEvent::Presence`]), made by the
    /// home as the member joins or leaves (`durable_presence`). A sink
    /// that cannot take one does not stop the join: it is counted.
    pub durable_presence: bool,
    /// Accepted story updates go to the namespace's own sink
    /// (`durable_collab`) instead of the embedded buffer: an update is
    /// refused with 112 while that sink cannot take events.
    pub durable_collab: bool,
}

/// Where a namespace's history is kept (`history_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryBackend {
    /// In the memory of the channel's home shard: lost with the node (a
    /// new epoch when the channel comes back).
    #[default]
    Memory,
    /// In a JetStream stream of the cluster's NATS: written before it is
    /// delivered, read back by whichever node becomes the channel's home,
    /// so offsets, epoch and history survive a node's death.
    Jetstream,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            history_size: 0,
            history_ttl_ms: 0,
            recover: false,
            presence: false,
            join_leave: false,
            join_leave_max_subscribers: 1000,
            client_publish: true,
            priority: Priority::Normal,
            max_subscribers: 0,
            subscribe: SubscribeMode::Public,
            collab: None,
            history_backend: HistoryBackend::Memory,
            durable: false,
            durable_presence: false,
            durable_collab: false,
        }
    }
}

impl NamespaceOptions {
    /// Whether channels of this namespace keep history: both a size and a
    /// time to live.
    pub fn keeps_history(&self) -> bool {
        self.history_size > 0 && self.history_ttl_ms > 0
    }

    /// Whether a channel with `subscribers` subscribers sends join/leave
    /// pushes.
    pub fn sends_join_leave(&self, subscribers: usize) -> bool {
        self.join_leave
            && (self.join_leave_max_subscribers == 0
                || subscribers <= self.join_leave_max_subscribers)
    }

    /// Whether the channel's home counts its members (presence, a
    /// subscriber limit, a story's editors): subscribes go through the
    /// home and closes tell it.
    pub fn counts_members(&self) -> bool {
        self.presence || self.max_subscribers > 0 || self.collab.is_some()
    }

    /// Whether a channel's members are kept in the cluster's presence
    /// bucket beside its stored history, so that they follow it to a new
    /// home (stories aside: their editors join the new home again).
    pub fn mirrors_members(&self) -> bool {
        self.history_backend == HistoryBackend::Jetstream
            && self.counts_members()
            && self.collab.is_none()
    }

    /// Whether a channel that has `subscribers` subscribers may take one
    /// more.
    pub fn admits_subscriber(&self, subscribers: usize) -> bool {
        self.max_subscribers == 0 || subscribers < self.max_subscribers
    }

    /// Checks the combinations the types cannot: history needs both a size
    /// and a time to live, recovery needs history, join/leave needs
    /// presence.
    pub fn check(&self) -> Result<(), OptionsError> {
        if self.history_size > 0 && self.history_ttl_ms == 0 {
            return Err(OptionsError::HistorySizeWithoutTtl);
        }
        if self.history_ttl_ms > 0 && self.history_size == 0 {
            return Err(OptionsError::HistoryTtlWithoutSize);
        }
        if self.recover && !self.keeps_history() {
            return Err(OptionsError::RecoverWithoutHistory);
        }
        if self.join_leave && !self.presence {
            return Err(OptionsError::JoinLeaveWithoutPresence);
        }
        if self.history_backend == HistoryBackend::Jetstream && !self.keeps_history() {
            return Err(OptionsError::JetstreamWithoutHistory);
        }
        if let Some(c) = &self.collab {
            c.validate().map_err(|_| OptionsError::CollabLimits)?;
        }
        Ok(())
    }
}

/// An inconsistent combination of [`NamespaceOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsError {
    /// `history_size` is set but `history_ttl` is not.
    HistorySizeWithoutTtl,
    /// `history_ttl` is set but `history_size` is not.
    HistoryTtlWithoutSize,
    /// `recover` without history.
    RecoverWithoutHistory,
    /// `join_leave` without `presence`.
    JoinLeaveWithoutPresence,
    /// `history_backend = "jetstream"` without history.
    JetstreamWithoutHistory,
    /// The story limits are inconsistent (`max_editors` of 0, or the
    /// `[collab]` limits; [`CollabConfig::validate`] names the key).
    CollabLimits,
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptionsError::HistorySizeWithoutTtl => {
                "history_size needs history_ttl above 0 too (history is kept only with both)"
            }
            OptionsError::HistoryTtlWithoutSize => {
                "history_ttl needs history_size above 0 too (history is kept only with both)"
            }
            OptionsError::RecoverWithoutHistory => {
                "recover needs history (history_size and history_ttl above 0)"
            }
            OptionsError::JoinLeaveWithoutPresence => "join_leave needs presence = true",
            OptionsError::JetstreamWithoutHistory => {
                "history_backend = \"jetstream\" needs history (history_size and history_ttl above 0)"
            }
            OptionsError::CollabLimits => {
                "collaboration limits are inconsistent (max_editors must be at least 1)"
            }
        })
    }
}

/// Why a set of namespaces cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceError {
    /// The name breaks the namespace rules of [`channel`].
    InvalidName(String),
    /// Two namespaces share a name.
    Duplicate(String),
    /// A namespace's options are inconsistent.
    Options {
        /// The namespace.
        name: String,
        /// What is wrong.
        error: OptionsError,
    },
}

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceError::InvalidName(name) => write!(
                f,
                "namespace name {name:?} must be 1-{} characters of A-Z a-z 0-9 _ -",
                channel::MAX_NAMESPACE_LEN
            ),
            NamespaceError::Duplicate(name) => {
                write!(f, "namespace {name:?} is configured more than once")
            }
            NamespaceError::Options { name, error } => write!(f, "namespace {name:?}: {error}"),
        }
    }
}

impl std::error::Error for NamespaceError {}

/// A namespace's index in its [`Namespaces`]; cheap to copy and store per
/// channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId(u32);

impl NsId {
    /// The `default` namespace.
    pub const DEFAULT: NsId = NsId(0);

    /// The index, for tables indexed by namespace (e.g. metrics).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Every namespace of the node and the lookup from channel names.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Name and options, indexed by [`NsId`]; `default` is first.
    entries: Vec<(Box<str>, NamespaceOptions)>,
    by_name: HashMap<Box<str>, NsId>,
    strict: bool,
}

impl Default for Namespaces {
    /// Only the `default` namespace with default options, not strict.
    fn default() -> Self {
        Self::new(false, []).expect("the default namespace is valid")
    }
}

impl Namespaces {
    /// Builds the set from `(name, options)` pairs. A pair named
    /// [`DEFAULT_NAMESPACE`] sets the default options; without one the
    /// default namespace has [`NamespaceOptions::default`]. `strict`: a
    /// channel of an unconfigured namespace resolves to nothing instead of
    /// to `default`.
    pub fn new<'a>(
        strict: bool,
        named: impl IntoIterator<Item = (&'a str, NamespaceOptions)>,
    ) -> Result<Namespaces, NamespaceError> {
        let mut entries = vec![(Box::from(DEFAULT_NAMESPACE), NamespaceOptions::default())];
        let mut by_name = HashMap::from([(Box::from(DEFAULT_NAMESPACE), NsId::DEFAULT)]);
        let mut default_seen = false;
        for (name, options) in named {
            if !channel::is_valid_namespace(name) {
                return Err(NamespaceError::InvalidName(name.to_string()));
            }
            options.check().map_err(|error| NamespaceError::Options {
                name: name.to_string(),
                error,
            })?;
            if name == DEFAULT_NAMESPACE {
                if default_seen {
                    return Err(NamespaceError::Duplicate(name.to_string()));
                }
                default_seen = true;
                entries[0].1 = options;
                continue;
            }
            if by_name.contains_key(name) {
                return Err(NamespaceError::Duplicate(name.to_string()));
            }
            let id = NsId(u32::try_from(entries.len()).expect("fewer than 2^32 namespaces"));
            by_name.insert(Box::from(name), id);
            entries.push((Box::from(name), options));
        }
        Ok(Namespaces {
            entries,
            by_name,
            strict,
        })
    }

    /// The namespace of a valid channel name and its options. `None` only
    /// when namespaces are strict and the channel's `ns:` is not
    /// configured. No allocation: one hash lookup for channels with `ns:`.
    pub fn resolve(&self, channel: &str) -> Option<(NsId, &NamespaceOptions)> {
        let id = match channel::namespace(channel) {
            None => NsId::DEFAULT,
            Some(ns) => match self.by_name.get(ns) {
                Some(&id) => id,
                None if self.strict => return None,
                None => NsId::DEFAULT,
            },
        };
        Some((id, self.get(id)))
    }

    /// The options of a namespace.
    ///
    /// # Panics
    /// If `id` did not come from this set.
    pub fn get(&self, id: NsId) -> &NamespaceOptions {
        &self.entries[id.index()].1
    }

    /// The name of a namespace (`default` for [`NsId::DEFAULT`]).
    ///
    /// # Panics
    /// If `id` did not come from this set.
    pub fn name(&self, id: NsId) -> &str {
        &self.entries[id.index()].0
    }

    /// Whether channels of unconfigured namespaces are refused.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Every namespace, `default` first.
    pub fn iter(&self) -> impl Iterator<Item = (NsId, &str, &NamespaceOptions)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, (name, o))| (NsId(i as u32), &**name, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> NamespaceOptions {
        NamespaceOptions {
            history_size: 100,
            history_ttl_ms: 60_000,
            recover: true,
            presence: true,
            join_leave: true,
            ..NamespaceOptions::default()
        }
    }

    fn feed() -> NamespaceOptions {
        NamespaceOptions {
            client_publish: false,
            priority: Priority::High,
            max_subscribers: 5,
            ..NamespaceOptions::default()
        }
    }

    #[test]
    fn resolves_default_named_and_plain() {
        let ns = Namespaces::new(false, [("chat", chat()), ("feed", feed())]).unwrap();
        let (id, o) = ns.resolve("room-1").unwrap();
        assert_eq!(id, NsId::DEFAULT);
        assert_eq!(o, &NamespaceOptions::default());
        assert_eq!(ns.name(id), "default");
        let (id, o) = ns.resolve("chat:room-1").unwrap();
        assert_eq!(ns.name(id), "chat");
        assert_eq!(o, &chat());
        assert_eq!(ns.get(id), &chat());
        let (id, o) = ns.resolve("feed:x").unwrap();
        assert_eq!(ns.name(id), "feed");
        assert!(!o.client_publish);
        assert_eq!(o.priority, Priority::High);
        // `default:` is the default namespace spelled out.
        assert_eq!(ns.resolve("default:x").unwrap().0, NsId::DEFAULT);
        // Namespace match is exact: no prefix or case folding.
        assert_eq!(ns.resolve("cha:x").unwrap().0, NsId::DEFAULT);
        assert_eq!(ns.resolve("Chat:x").unwrap().0, NsId::DEFAULT);
        let names: Vec<&str> = ns.iter().map(|(_, n, _)| n).collect();
        assert_eq!(names, ["default", "chat", "feed"]);
    }

    #[test]
    fn unknown_namespace_falls_back_or_is_refused() {
        let lax = Namespaces::new(false, [("chat", chat())]).unwrap();
        let (id, o) = lax.resolve("other:x").unwrap();
        assert_eq!(id, NsId::DEFAULT);
        assert_eq!(o, &NamespaceOptions::default());
        assert!(!lax.is_strict());

        let strict = Namespaces::new(true, [("chat", chat())]).unwrap();
        assert!(strict.is_strict());
        assert_eq!(strict.resolve("other:x"), None);
        // Known namespaces, plain channels and `default:` still resolve.
        assert_eq!(strict.name(strict.resolve("chat:x").unwrap().0), "chat");
        assert_eq!(strict.resolve("plain").unwrap().0, NsId::DEFAULT);
        assert_eq!(strict.resolve("default:x").unwrap().0, NsId::DEFAULT);
    }

    #[test]
    fn configured_default_applies_to_plain_channels() {
        let ns = Namespaces::new(false, [("chat", chat()), ("default", feed())]).unwrap();
        assert_eq!(ns.resolve("plain").unwrap().1, &feed());
        assert_eq!(ns.resolve("nope:x").unwrap().1, &feed());
        assert_eq!(ns.get(NsId::DEFAULT), &feed());
        assert_eq!(ns.iter().count(), 2);
        let empty = Namespaces::default();
        assert_eq!(empty.resolve("a").unwrap().1, &NamespaceOptions::default());
        assert_eq!(empty.resolve("b:a").unwrap().0, NsId::DEFAULT);
    }

    #[test]
    fn build_errors() {
        let e = Namespaces::new(false, [("chat", chat()), ("chat", feed())]).unwrap_err();
        assert_eq!(e, NamespaceError::Duplicate("chat".into()));
        assert!(e.to_string().contains("more than once"), "{e}");
        let twice = [("default", feed()), ("default", feed())];
        assert_eq!(
            Namespaces::new(false, twice).unwrap_err(),
            NamespaceError::Duplicate("default".into())
        );
        for bad in ["", "a:b", "a.b", "ü"] {
            let e = Namespaces::new(false, [(bad, chat())]).unwrap_err();
            assert_eq!(e, NamespaceError::InvalidName(bad.into()));
        }
        let long = "n".repeat(65);
        assert!(Namespaces::new(false, [(long.as_str(), chat())]).is_err());
        let e = Namespaces::new(
            false,
            [(
                "x",
                NamespaceOptions {
                    join_leave: true,
                    ..NamespaceOptions::default()
                },
            )],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "namespace \"x\": join_leave needs presence = true"
        );
    }

    #[test]
    fn option_checks() {
        let d = NamespaceOptions::default();
        assert_eq!(d.check(), Ok(()));
        assert!(!d.keeps_history());
        assert!(chat().keeps_history());
        let cases = [
            (
                NamespaceOptions {
                    history_size: 10,
                    ..d.clone()
                },
                OptionsError::HistorySizeWithoutTtl,
            ),
            (
                NamespaceOptions {
                    history_ttl_ms: 1000,
                    ..d.clone()
                },
                OptionsError::HistoryTtlWithoutSize,
            ),
            (
                NamespaceOptions {
                    recover: true,
                    ..d.clone()
                },
                OptionsError::RecoverWithoutHistory,
            ),
            (
                NamespaceOptions {
                    join_leave: true,
                    ..d.clone()
                },
                OptionsError::JoinLeaveWithoutPresence,
            ),
        ];
        for (o, want) in cases {
            assert_eq!(o.check(), Err(want), "{o:?}");
        }
    }

    #[test]
    fn join_leave_cap_and_subscriber_cap() {
        let mut o = chat();
        assert!(o.sends_join_leave(1000));
        assert!(!o.sends_join_leave(1001));
        o.join_leave_max_subscribers = 0;
        assert!(o.sends_join_leave(1_000_000));
        o.join_leave = false;
        assert!(!o.sends_join_leave(1));

        let f = feed();
        assert!(f.admits_subscriber(4));
        assert!(!f.admits_subscriber(5));
        assert!(NamespaceOptions::default().admits_subscriber(usize::MAX - 1));
    }
}
