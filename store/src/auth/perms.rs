//! Key-range permissions: whether the ranges a user's roles grant cover a requested range.
//!
//! Ranges follow etcd's conventions: an empty `range_end` is the single key, `"\0"` means every key
//! from `key` on, anything else is `[key, range_end)`. Granted ranges are merged before the check,
//! so a request spanning two adjacent grants is allowed, as in etcd.

use std::cmp::Ordering;

/// A half-open key interval; `end == None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// First key in the interval.
    pub start: Vec<u8>,
    /// First key after the interval, or `None` for no end.
    pub end: Option<Vec<u8>>,
}

impl Interval {
    /// The interval an etcd `(key, range_end)` pair names. A `range_end` at or before `key` names
    /// no keys in a read; it is taken as the single key, which is the stricter reading.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> Self {
        let single = || {
            let mut end = key.to_vec();
            end.push(0);
            Some(end)
        };
        let end = match range_end {
            [] => single(),
            [0] => None,
            end if end <= key => single(),
            end => Some(end.to_vec()),
        };
        Self { start: key.to_vec(), end }
    }
}

/// Compares interval ends, `None` (unbounded) being the largest.
fn cmp_end(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => a.cmp(b),
    }
}

/// True when the union of `granted` contains all of `wanted`.
pub fn covers(mut granted: Vec<Interval>, wanted: &Interval) -> bool {
    granted.sort_by(|a, b| a.start.cmp(&b.start));
    let mut merged: Vec<Interval> = Vec::with_capacity(granted.len());
    for next in granted {
        if let Some(last) = merged.last_mut() {
            let touches = match &last.end {
                None => true,
                Some(end) => next.start <= *end,
            };
            if touches {
                if cmp_end(&next.end, &last.end) == Ordering::Greater {
                    last.end = next.end;
                }
                continue;
            }
        }
        merged.push(next);
    }
    merged.iter().any(|g| g.start <= wanted.start && cmp_end(&g.end, &wanted.end) != Ordering::Less)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(key: &str, end: &str) -> Interval {
        Interval::from_etcd(key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn adjacent_and_overlapping_grants_merge_and_gaps_are_refused() {
        let grants = vec![iv("a", "c"), iv("c", "e"), iv("x", "")];
        assert!(covers(grants.clone(), &iv("a", "e")), "adjacent grants merge");
        assert!(covers(grants.clone(), &iv("b", "")));
        assert!(covers(grants.clone(), &iv("x", "")));
        assert!(!covers(grants.clone(), &iv("a", "f")), "past the end");
        assert!(!covers(grants.clone(), &iv("x", "y")), "a single key does not cover a range");
        assert!(!covers(grants.clone(), &iv("e", "")));
        assert!(covers(vec![iv("k", "\0")], &iv("z", "\0")), "from-key grants are unbounded");
        assert!(!covers(vec![iv("k", "z")], &iv("k", "\0")), "a bounded grant never covers an unbounded range");
        assert!(!covers(Vec::new(), &iv("a", "")));
    }
}
