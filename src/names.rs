//! Span names (`{operation} {template}`) interned so the per-message path does
//! not format and allocate them.
//!
//! A span name must be a `Cow<'static, str>`, so a name is leaked once and then
//! shared. Templates are low-cardinality by design, but a mapper can still let
//! ids through, so at most [`MAX_INTERNED`] names are ever leaked per process;
//! past that, names are formatted per span as before. Lookups go through a
//! per-thread map (no lock per message); only a thread's first sight of a name
//! takes the global lock.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use opentelemetry::Value;

/// How many distinct span names are ever leaked (about 64 bytes each).
pub(crate) const MAX_INTERNED: usize = 4096;

/// A span name and the destination template it ends with.
#[derive(Clone, Debug)]
pub(crate) struct SpanName {
    name: Cow<'static, str>,
    /// Byte offset of the template in `name`.
    split: usize,
}

impl SpanName {
    /// `"{operation} {template}"`, interned when the budget allows.
    pub(crate) fn new(operation: &'static str, template: &str) -> Self {
        let split = operation.len() + 1;
        let name = match intern(operation, template) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("{operation} {template}")),
        };
        Self { name, split }
    }

    /// The span name (no allocation when interned).
    pub(crate) fn name(&self) -> Cow<'static, str> {
        self.name.clone()
    }

    /// The destination template.
    pub(crate) fn template(&self) -> &str {
        &self.name[self.split..]
    }

    /// The template as an attribute value (no allocation when interned).
    pub(crate) fn template_value(&self) -> Value {
        match &self.name {
            Cow::Borrowed(name) => Value::from(&name[self.split..]),
            Cow::Owned(name) => Value::from(name[self.split..].to_owned()),
        }
    }

    /// `subject` as an attribute value, sharing the template's storage when the
    /// two are equal (a subject without ids or wildcards).
    pub(crate) fn subject_value(&self, subject: &str) -> Value {
        match &self.name {
            Cow::Borrowed(name) if &name[self.split..] == subject => {
                Value::from(&name[self.split..])
            }
            _ => Value::from(subject.to_owned()),
        }
    }
}

/// FxHash-style hasher: the keys are short trusted-length strings held in a
/// bounded map, so a fast non-keyed hash is fine here.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type Fast = BuildHasherDefault<FastHasher>;

/// Per thread: template → the interned names built on it, one per operation.
type Local = HashMap<Box<str>, Vec<(&'static str, &'static str)>, Fast>;

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(HashMap::default());
}

static GLOBAL: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

/// Per thread: subject → the names of operations on it, for subjects whose
/// template is the subject itself (most publishes: a subject without ids), keyed
/// by the instrumentation that mapped them (mappers differ).
type Subjects = HashMap<Box<str>, Vec<(u64, &'static str, SpanName)>, Fast>;

/// How many subjects one thread remembers names for.
const MAX_CACHED_SUBJECTS: usize = 4096;

thread_local! {
    static SUBJECTS: RefCell<Subjects> = RefCell::new(HashMap::default());
}

/// The last name [`cached`] returned on this thread (instrumentation, operation,
/// interned name, template offset): a publisher sending to one subject again and
/// again finds it with one comparison.
type Last = Option<(u64, &'static str, &'static str, usize)>;

thread_local! {
    static LAST: std::cell::Cell<Last> = const { std::cell::Cell::new(None) };
}

/// The name of `operation` on `subject` under instrumentation `id`, if this thread
/// has seen it: spares the mapper and the template lookup on every publish.
pub(crate) fn cached(id: u64, operation: &'static str, subject: &str) -> Option<SpanName> {
    if let Ok(Some((last_id, last_op, name, split))) = LAST.try_with(std::cell::Cell::get) {
        if last_id == id
            && (std::ptr::eq(last_op, operation) || last_op == operation)
            && name.get(split..) == Some(subject)
        {
            return Some(SpanName {
                name: Cow::Borrowed(name),
                split,
            });
        }
    }
    let found = SUBJECTS
        .try_with(|subjects| {
            let subjects = subjects.try_borrow().ok()?;
            subjects
                .get(subject)?
                .iter()
                .find(|(i, op, _)| *i == id && *op == operation)
                .map(|(_, _, name)| name.clone())
        })
        .ok()
        .flatten()?;
    if let Cow::Borrowed(name) = found.name {
        let _ = LAST.try_with(|last| last.set(Some((id, operation, name, found.split))));
    }
    Some(found)
}

/// Remembers `name` for `operation` on `subject` when its template is the subject
/// itself and the name is interned (so the cache stays bounded and cheap).
pub(crate) fn remember(id: u64, operation: &'static str, subject: &str, name: &SpanName) {
    if !matches!(name.name, Cow::Borrowed(_)) || name.template() != subject {
        return;
    }
    let _ = SUBJECTS.try_with(|subjects| {
        let Ok(mut subjects) = subjects.try_borrow_mut() else {
            return;
        };
        if let Some(names) = subjects.get_mut(subject) {
            if names.len() < 16 {
                names.push((id, operation, name.clone()));
            }
            return;
        }
        if subjects.len() < MAX_CACHED_SUBJECTS {
            subjects.insert(subject.into(), vec![(id, operation, name.clone())]);
        }
    });
}

/// `value` as a `&'static str` from the bounded global set (server addresses:
/// attribute values cloned per span without touching a reference count).
pub(crate) fn static_str(value: &str) -> Option<&'static str> {
    let mut global = GLOBAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    intern_in(
        global.get_or_insert_with(HashSet::new),
        MAX_INTERNED,
        value.to_owned(),
    )
}

/// How many distinct attribute values are ever leaked (stream, consumer and
/// server names and ids: low-cardinality, but ephemeral consumers and client ids
/// after reconnects add new ones over a process's life). A budget apart from
/// span names', so running out here never costs a name its interning.
pub(crate) const MAX_ATTRIBUTE_VALUES: usize = 1024;

static ATTRIBUTE_VALUES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

/// `value` as an attribute value whose copies touch no reference count: from a
/// bounded global set, or shared (an `Arc<str>`) once that set is full.
///
/// A span's copy of an attribute value is made on the thread that starts the
/// span and dropped on the exporter's: a shared reference count would move
/// between the two CPUs for each copy.
pub(crate) fn attribute_value(value: &str) -> Value {
    let mut set = ATTRIBUTE_VALUES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match intern_in(
        set.get_or_insert_with(HashSet::new),
        MAX_ATTRIBUTE_VALUES,
        value.to_owned(),
    ) {
        Some(value) => Value::from(value),
        None => Value::from(std::sync::Arc::<str>::from(value)),
    }
}

fn intern(operation: &'static str, template: &str) -> Option<&'static str> {
    LOCAL
        .try_with(|local| {
            let mut local = local.try_borrow_mut().ok()?;
            if let Some(names) = local.get(template) {
                if let Some((_, name)) = names.iter().find(|(op, _)| *op == operation) {
                    return Some(*name);
                }
            }
            let name = intern_global(operation, template)?;
            match local.get_mut(template) {
                Some(names) => names.push((operation, name)),
                None => {
                    local.insert(template.into(), vec![(operation, name)]);
                }
            }
            Some(name)
        })
        .ok()
        .flatten()
}

fn intern_global(operation: &str, template: &str) -> Option<&'static str> {
    let full = format!("{operation} {template}");
    let mut global = GLOBAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    intern_in(global.get_or_insert_with(HashSet::new), MAX_INTERNED, full)
}

/// Returns `full`'s entry in `set`, leaking it into the set while it holds fewer
/// than `cap` names.
fn intern_in(set: &mut HashSet<&'static str>, cap: usize, full: String) -> Option<&'static str> {
    if let Some(name) = set.get(full.as_str()) {
        return Some(name);
    }
    if set.len() >= cap {
        return None;
    }
    let name: &'static str = Box::leak(full.into_boxed_str());
    set.insert(name);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_are_interned_once() {
        let text = |value: Value| match value {
            Value::String(s) => s,
            other => panic!("not a string: {other:?}"),
        };
        let a = text(attribute_value("ORDERS-consumer-7"));
        let b = text(attribute_value(&String::from("ORDERS-consumer-7")));
        assert_eq!(a.as_str(), "ORDERS-consumer-7");
        // One leaked copy, shared by every value made from the same text.
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
    }

    #[test]
    fn names_are_interned_and_split_at_the_template() {
        let a = SpanName::new("publish", "orders.*");
        let b = SpanName::new("publish", "orders.*");
        assert_eq!(a.name(), "publish orders.*");
        assert_eq!(a.template(), "orders.*");
        assert_eq!(a.template_value().as_str(), "orders.*");
        match (a.name(), b.name()) {
            (Cow::Borrowed(x), Cow::Borrowed(y)) => assert!(std::ptr::eq(x, y)),
            _ => panic!("not interned"),
        }
        let other = SpanName::new("process", "orders.*");
        assert_eq!(other.name(), "process orders.*");
        assert_eq!(a.subject_value("orders.*").as_str(), "orders.*");
        assert_eq!(a.subject_value("orders.1").as_str(), "orders.1");
    }

    #[test]
    fn subjects_are_cached_per_instrumentation_and_operation_when_unmapped() {
        let name = SpanName::new("publish", "cache.plain");
        remember(7, "publish", "cache.plain", &name);
        assert_eq!(
            cached(7, "publish", "cache.plain").map(|n| n.name()),
            Some(Cow::Borrowed("publish cache.plain"))
        );
        assert!(
            cached(8, "publish", "cache.plain").is_none(),
            "another mapper"
        );
        assert!(cached(7, "request", "cache.plain").is_none());
        // A subject whose template differs is never cached.
        let mapped = SpanName::new("publish", "cache.*");
        remember(7, "publish", "cache.42", &mapped);
        assert!(cached(7, "publish", "cache.42").is_none());
    }

    #[test]
    fn interning_stops_at_the_cap_and_names_are_then_formatted() {
        let mut set = HashSet::new();
        assert!(intern_in(&mut set, 2, "a x".into()).is_some());
        assert!(intern_in(&mut set, 2, "a y".into()).is_some());
        assert_eq!(intern_in(&mut set, 2, "a z".into()), None);
        // Names already in are still found at the cap.
        assert_eq!(intern_in(&mut set, 2, "a x".into()), Some("a x"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_name_interned_on_one_thread_is_shared_with_others() {
        let here = SpanName::new("ack", "shared.template");
        let there = std::thread::spawn(|| SpanName::new("ack", "shared.template").name())
            .join()
            .expect("thread");
        match (here.name(), there) {
            (Cow::Borrowed(x), Cow::Borrowed(y)) => assert!(std::ptr::eq(x, y)),
            _ => panic!("not interned"),
        }
    }
}
