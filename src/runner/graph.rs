//! Who needs whom among a runner's services: the rule, checked before anything starts.
//!
//! A service that declares nothing needs every service added before it (the list order);
//! one that declares its needs ([`ServiceOptions::needs`](super::ServiceOptions::needs),
//! [`ServiceOptions::independent`](super::ServiceOptions::independent)) needs exactly those. A
//! name that is not a service of the runner, or needs that form a cycle, are refused.
//!
//! The list order's "every service before it" is kept short: a service that declares nothing
//! needs the services before it back to, and including, the nearest one that declares nothing
//! either (which itself needs all before it). The order in which things may start and close
//! is the same; a run of N such services is a chain of N edges, not N²/2.

use std::collections::VecDeque;
use std::time::Instant;

use crate::error::Error;

/// The services' needs, by index in the order they were added: a directed acyclic graph.
#[derive(Debug, Clone, Default)]
pub(super) struct Graph {
    /// The services each one needs, directly.
    needs: Vec<Vec<usize>>,
    /// The services that need each one, directly.
    needed_by: Vec<Vec<usize>>,
    /// Every service after those it needs: an order in which they could start one by one.
    order: Vec<usize>,
}

impl Graph {
    /// The graph of services called `names`, in the order they were added, each with what it
    /// declared: `None` for nothing (it needs every service before it), or the names it needs.
    ///
    /// # Errors
    ///
    /// Of kind [`InvalidInput`](crate::ErrorKind::InvalidInput), naming the service: a name it
    /// needs that is not one of `names`, or (naming every service in it) a cycle.
    pub(super) fn new(names: &[&str], declared: &[Option<&[String]>]) -> Result<Graph, Error> {
        debug_assert_eq!(names.len(), declared.len());
        let index: std::collections::HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut needs = Vec::with_capacity(names.len());
        for (i, own_declared) in declared.iter().enumerate() {
            let mut own = Vec::new();
            match own_declared {
                None => {
                    for j in (0..i).rev() {
                        own.push(j);
                        // That one needs (directly or not) every service before it.
                        if declared[j].is_none() {
                            break;
                        }
                    }
                }
                Some(list) => {
                    for name in list.iter() {
                        let Some(&j) = index.get(name.as_str()) else {
                            return Err(Error::invalid_input(
                                names[i],
                                format!(
                                    "needs {name:?}, which is not a service of this runner \
                                     (add it, or leave it out of the needs)"
                                ),
                            ));
                        };
                        if !own.contains(&j) {
                            own.push(j);
                        }
                    }
                }
            }
            needs.push(own);
        }
        let mut needed_by = vec![Vec::new(); names.len()];
        for (i, own) in needs.iter().enumerate() {
            for &j in own {
                needed_by[j].push(i);
            }
        }
        let order = topological(&needs, &needed_by).map_err(|cycle| {
            let mut path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
            path.push(names[cycle[0]]);
            Error::invalid_input(
                names[cycle[0]],
                format!(
                    "the services' needs form a cycle: {} (each needs the next); nothing can \
                     start first",
                    path.join(" -> ")
                ),
            )
        })?;
        Ok(Graph {
            needs,
            needed_by,
            order,
        })
    }

    /// How many services the graph has.
    pub(super) fn len(&self) -> usize {
        self.needs.len()
    }

    /// The services `index` needs, directly.
    pub(super) fn needs(&self, index: usize) -> &[usize] {
        &self.needs[index]
    }

    /// The services that need `index`, directly.
    pub(super) fn needed_by(&self, index: usize) -> &[usize] {
        &self.needed_by[index]
    }

    /// Every service after those it needs.
    pub(super) fn order(&self) -> &[usize] {
        &self.order
    }

    /// Every service that needs `index`, directly or through others, in breadth-first order.
    pub(super) fn dependants(&self, index: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut queue = VecDeque::from([index]);
        let mut all = Vec::new();
        while let Some(i) = queue.pop_front() {
            for &d in &self.needed_by[i] {
                if !seen[d] {
                    seen[d] = true;
                    all.push(d);
                    queue.push_back(d);
                }
            }
        }
        all
    }
}

/// The services in an order where each comes after those it needs (ties by the order they
/// were added); or, when there is none, one cycle, each needing the next.
fn topological(needs: &[Vec<usize>], needed_by: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut queue: VecDeque<usize> = (0..needs.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(needs.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &d in &needed_by[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                queue.push_back(d);
            }
        }
    }
    if order.len() == needs.len() {
        return Ok(order);
    }
    // Every service left waits for one that is left too: walk from the first until a service
    // comes back, and the walk from there is a cycle.
    let first = (0..needs.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
    let mut walk = vec![first];
    let mut at = first;
    loop {
        let next = needs[at]
            .iter()
            .copied()
            .find(|&j| waiting[j] > 0)
            .unwrap_or(first);
        if let Some(pos) = walk.iter().position(|&w| w == next) {
            return Err(walk.split_off(pos));
        }
        walk.push(next);
        at = next;
    }
}

/// The critical path: the chain of services that decided when the last of them ended. `spans`
/// are when each service's step (its start until ready, or its close) began and ended, if it
/// ran; `unblocked_by[i]` is the service whose end let service `i` begin (the last of those it
/// waited for). Returns the chain, first step first: from the step that ended last, back
/// through what unblocked each.
pub(super) fn critical_path(
    spans: &[Option<(Instant, Instant)>],
    unblocked_by: &[Option<usize>],
) -> Vec<usize> {
    let last = (spans.iter().enumerate())
        .filter_map(|(i, span)| span.map(|(_, end)| (end, i)))
        .max();
    let Some((_, mut at)) = last else {
        return Vec::new();
    };
    let mut chain = vec![at];
    while let Some(before) = unblocked_by[at] {
        // Each step began after the one before it ended: the walk ends.
        if spans[before].is_none() || chain.len() > spans.len() {
            break;
        }
        chain.push(before);
        at = before;
    }
    chain.reverse();
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_declared_is_the_list_order_as_a_chain() {
        let g = Graph::new(&["a", "b", "c"], &[None, None, None]).unwrap();
        assert_eq!(g.needs(0), &[] as &[usize]);
        assert_eq!(g.needs(1), &[0]);
        assert_eq!(g.needs(2), &[1]);
        assert_eq!(g.order(), &[0, 1, 2]);
        assert_eq!(g.dependants(0), vec![1, 2]);
    }

    #[test]
    fn a_service_that_declares_nothing_needs_every_one_before_it() {
        // b is independent; c declares nothing: it needs b and a (a needs nothing before it).
        let none: Vec<String> = Vec::new();
        let g = Graph::new(&["a", "b", "c"], &[None, Some(&none), None]).unwrap();
        assert_eq!(g.needs(1), &[] as &[usize]);
        assert_eq!(g.needs(2), &[1, 0]);
        assert_eq!(g.needed_by(0), &[2]);
    }

    #[test]
    fn declared_needs_are_exactly_those() {
        let db = names(&["db"]);
        let none = names(&[]);
        let g = Graph::new(
            &["db", "cache", "api"],
            &[Some(&none), Some(&none), Some(&db)],
        )
        .unwrap();
        assert_eq!(g.needs(2), &[0]);
        assert!(g.needs(1).is_empty());
        assert_eq!(g.dependants(0), vec![2]);
        assert!(g.dependants(1).is_empty());
        // A service may need one added after it.
        let api = names(&["api", "api"]);
        let g = Graph::new(&["web", "api"], &[Some(&api), Some(&none)]).unwrap();
        assert_eq!(g.needs(0), &[1]);
        assert_eq!(g.order(), &[1, 0]);
    }

    #[test]
    fn an_unknown_name_is_refused_naming_both() {
        let dbb = names(&["dbb"]);
        let e = Graph::new(&["db", "api"], &[None, Some(&dbb)]).unwrap_err();
        assert!(e.has_kind(ErrorKind::InvalidInput));
        assert_eq!(e.service(), Some("api"));
        assert!(e.to_string().contains("\"dbb\""), "{e}");
    }

    #[test]
    fn a_cycle_is_refused_naming_every_service_in_it() {
        let (a, b, c) = (names(&["b"]), names(&["c"]), names(&["a"]));
        let free = names(&[]);
        let e = Graph::new(
            &["free", "a", "b", "c"],
            &[Some(&free), Some(&a), Some(&b), Some(&c)],
        )
        .unwrap_err();
        assert!(e.has_kind(ErrorKind::InvalidInput));
        assert!(e.to_string().contains("a -> b -> c -> a"), "{e}");
        let own = names(&["a"]);
        let e = Graph::new(&["a"], &[Some(&own)]).unwrap_err();
        assert!(e.to_string().contains("a -> a"), "{e}");
    }

    #[test]
    fn the_critical_path_runs_back_from_the_step_that_ended_last() {
        let t = Instant::now();
        let ms = |n: u64| t + std::time::Duration::from_millis(n);
        // db 0-3, cache 0-1, repository 3-8 (after db), api 8-9 (after repository), and a
        // service that never ran.
        let spans = [
            Some((ms(0), ms(3))),
            Some((ms(0), ms(1))),
            Some((ms(3), ms(8))),
            Some((ms(8), ms(9))),
            None,
        ];
        let unblocked_by = [None, None, Some(0), Some(2), Some(3)];
        assert_eq!(critical_path(&spans, &unblocked_by), vec![0, 2, 3]);
        assert!(critical_path(&[None], &[None]).is_empty());
    }
}
