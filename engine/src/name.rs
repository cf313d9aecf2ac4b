//! A queue's name as a job in flight carries it ([`Name`]).
//!
//! Every new job carries its queue's name from the producer to the shard
//! that runs it. Shared through one `Arc`, each job cost a reference-count
//! increment on the producer and a decrement on the shard, on one cache
//! line that both cores write all the time: measured with the name left
//! static, that traffic was ~15% of a no-op job's CPU (`docs/benchmarks.md`).
//! A name that lives as long as the program (a literal given to
//! `Job::new`) is therefore borrowed, and only another name is shared.

use std::sync::Arc;

/// A queue's name: borrowed for the program's life, or shared.
#[derive(Clone)]
pub(crate) enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    /// Whether both are the same allocation (a cheap test before comparing
    /// the text).
    pub(crate) fn same(&self, other: &Name) -> bool {
        std::ptr::eq(self.as_ptr(), other.as_ptr()) && self.len() == other.len()
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Shared(s) => s,
        }
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.same(other) || **self == **other
    }
}

impl Eq for Name {}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Name {
        Name::Shared(s)
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Name {
        Name::Static(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_by_text_and_tell_the_same_allocation() {
        let a: Name = Arc::<str>::from("emails").into();
        let b = a.clone();
        let c: Name = Arc::<str>::from("emails").into();
        let d: Name = "emails".into();
        assert!(a.same(&b) && !a.same(&c));
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_eq!(&*d, "emails");
        assert_ne!(a, Name::from("other"));
    }
}
