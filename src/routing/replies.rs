//! Who answers WeChat: the reply owner of each callback, from the targets' `replies_to`.
//!
//! A route is a `MsgType` (`text`, `event`), an event (`event:CLICK`) or `*` (everything not
//! claimed otherwise); values compare ignoring ASCII case, like the targets' filters. The owner
//! of a callback is the target whose route matches it most specifically: its event, then its
//! `MsgType`, then `*`. `primary = "x"` is `replies_to = ["*"]` on x.
//!
//! A target that also lists `users` owns its routes for those senders only, and for a sender it
//! lists it wins over every owner without `users`, whatever their routes: a tester's messages are
//! answered by the tester's target while the production bot answers everyone else. Between
//! owners that both list a sender, the route rules apply. Pure: built from names and lists, so
//! the routing table's build checks and resolves with it, and nothing duplicates the rules.

use std::collections::HashMap;

/// One entry of `replies_to`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// `*`: whatever no other route claims.
    Any,
    /// A `MsgType`; `event` covers the events that no `event:X` claims.
    MsgType(String),
    /// `event:X`: one event.
    Event(String),
}

impl Route {
    /// `"event:CLICK"` → `Event("click")`; `None` for an empty type or event.
    pub fn parse(text: &str) -> Option<Route> {
        let text = text.trim();
        if text == "*" {
            return Some(Route::Any);
        }
        let route = match text.split_once(':') {
            Some((kind, event)) if kind.eq_ignore_ascii_case("event") => {
                Route::Event(event.to_ascii_lowercase())
            }
            Some(_) => return None,
            None => Route::MsgType(text.to_ascii_lowercase()),
        };
        match &route {
            Route::MsgType(v) | Route::Event(v) if v.is_empty() || v.contains('*') => None,
            _ => Some(route),
        }
    }

    /// Can a target with these (lower-cased) filters ever get a callback on this route?
    pub fn passes(&self, msg_types: Option<&[String]>, events: Option<&[String]>) -> bool {
        let listed =
            |list: Option<&[String]>, v: &str| list.is_none_or(|l| l.iter().any(|i| i == v));
        match self {
            Route::Any => true,
            Route::MsgType(t) => listed(msg_types, t),
            Route::Event(e) => listed(msg_types, "event") && listed(events, e),
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Any => f.write_str("*"),
            Route::MsgType(t) => f.write_str(t),
            Route::Event(e) => write!(f, "event:{e}"),
        }
    }
}

/// Two targets claim the same route (for the same sender, when both list it in `users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub route: Route,
    pub first: String,
    pub second: String,
    pub user: Option<String>,
}

/// One target's claim: its index among the account's targets, its name, its routes, and the
/// senders it is limited to (`users`), if any.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub index: usize,
    pub name: &'a str,
    pub routes: Vec<Route>,
    pub users: Option<&'a [String]>,
}

/// Route → the index of its owner among the account's targets; and per listed sender, the
/// routes of the owners that list it.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    routes: HashMap<Route, usize>,
    by_user: HashMap<String, HashMap<Route, usize>>,
}

/// Adds `claim`'s routes to `routes`: a route listed twice by the same target is harmless; by
/// two targets it is a conflict.
fn add<'a>(
    routes: &mut HashMap<Route, (usize, &'a str)>,
    claim: &Claim<'a>,
    user: Option<&str>,
) -> Result<(), Conflict> {
    for route in &claim.routes {
        match routes.get(route) {
            Some((other, other_name)) if *other != claim.index => {
                return Err(Conflict {
                    route: route.clone(),
                    first: (*other_name).to_owned(),
                    second: claim.name.to_owned(),
                    user: user.map(str::to_owned),
                });
            }
            _ => {
                routes.insert(route.clone(), (claim.index, claim.name));
            }
        }
    }
    Ok(())
}

impl Owners {
    pub fn build<'a>(claims: impl IntoIterator<Item = Claim<'a>>) -> Result<Owners, Conflict> {
        let mut routes: HashMap<Route, (usize, &'a str)> = HashMap::new();
        let mut by_user: HashMap<String, HashMap<Route, (usize, &'a str)>> = HashMap::new();
        for claim in claims {
            match claim.users {
                None => add(&mut routes, &claim, None)?,
                Some(users) => {
                    for user in users {
                        add(by_user.entry(user.clone()).or_default(), &claim, Some(user))?;
                    }
                }
            }
        }
        let indexes = |routes: HashMap<Route, (usize, &str)>| {
            routes.into_iter().map(|(r, (i, _))| (r, i)).collect()
        };
        Ok(Owners {
            routes: indexes(routes),
            by_user: by_user
                .into_iter()
                .map(|(user, routes)| (user, indexes(routes)))
                .filter(|(_, routes): &(String, HashMap<Route, usize>)| !routes.is_empty())
                .collect(),
        })
    }

    /// The owner's index for a callback of this `MsgType` and `Event` from `sender`: among the
    /// owners that list the sender first, then among the others; most specific route first.
    pub fn owner(
        &self,
        msg_type: Option<&str>,
        event: Option<&str>,
        sender: Option<&str>,
    ) -> Option<usize> {
        let msg_type = msg_type.map(str::to_ascii_lowercase);
        let event = event
            .filter(|_| msg_type.as_deref() == Some("event"))
            .map(str::to_ascii_lowercase);
        let most_specific = |routes: &HashMap<Route, usize>| {
            let by_event = event
                .as_ref()
                .and_then(|e| routes.get(&Route::Event(e.clone())));
            by_event
                .or_else(|| {
                    (msg_type.as_ref()).and_then(|t| routes.get(&Route::MsgType(t.clone())))
                })
                .or_else(|| routes.get(&Route::Any))
                .copied()
        };
        sender
            .and_then(|s| self.by_user.get(s))
            .and_then(most_specific)
            .or_else(|| most_specific(&self.routes))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.by_user.is_empty()
    }

    /// Every claimed route, its owner's index, and the sender the claim is limited to (`None`:
    /// everyone): the table as configured, for people to read (the console), in no order.
    pub fn entries(&self) -> impl Iterator<Item = (&Route, usize, Option<&str>)> {
        let everyone = self.routes.iter().map(|(route, &i)| (route, i, None));
        let listed = self.by_user.iter().flat_map(|(user, routes)| {
            routes
                .iter()
                .map(move |(route, &i)| (route, i, Some(user.as_str())))
        });
        everyone.chain(listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(list: &[&str]) -> Vec<Route> {
        list.iter().map(|r| Route::parse(r).unwrap()).collect()
    }

    fn claims<'a>(list: &[(usize, &'a str, Vec<Route>)]) -> Vec<Claim<'a>> {
        list.iter()
            .map(|(index, name, routes)| Claim {
                index: *index,
                name,
                routes: routes.clone(),
                users: None,
            })
            .collect()
    }

    /// Issue 27: a target limited to some senders owns their replies on its routes, before any
    /// owner without `users`, whatever that one's routes; everyone else is answered as before.
    #[test]
    fn an_owner_of_listed_senders_wins_for_them_only() {
        let tester = vec!["oTester".to_owned()];
        let both = vec!["oTester".to_owned(), "oOther".to_owned()];
        let mut list = claims(&[
            (0, "bot", routes(&["*"])),
            (1, "menu", routes(&["event:CLICK"])),
        ]);
        list.push(Claim {
            index: 2,
            name: "laptop",
            routes: routes(&["*"]),
            users: Some(&tester),
        });
        list.push(Claim {
            index: 3,
            name: "voice-lab",
            routes: routes(&["voice"]),
            users: Some(&both),
        });
        let owners = Owners::build(list).unwrap();
        // The tester: the laptop, even for a menu click that the menu owns for everyone else;
        // a voice message: both listed targets list the tester, the more specific route wins.
        assert_eq!(owners.owner(Some("text"), None, Some("oTester")), Some(2));
        assert_eq!(
            owners.owner(Some("event"), Some("CLICK"), Some("oTester")),
            Some(2)
        );
        assert_eq!(owners.owner(Some("voice"), None, Some("oTester")), Some(3));
        // Another listed sender: only voice is claimed for it; the rest falls back.
        assert_eq!(owners.owner(Some("voice"), None, Some("oOther")), Some(3));
        assert_eq!(owners.owner(Some("text"), None, Some("oOther")), Some(0));
        assert_eq!(
            owners.owner(Some("event"), Some("click"), Some("oOther")),
            Some(1)
        );
        // Everyone else, and no sender at all.
        assert_eq!(owners.owner(Some("text"), None, Some("oSomeone")), Some(0));
        assert_eq!(owners.owner(Some("text"), None, None), Some(0));
    }

    /// What the console's routing table lists: every claim, for everyone or for one sender.
    #[test]
    fn entries_list_every_claim_with_its_sender() {
        let tester = vec!["oTester".to_owned()];
        let mut list = claims(&[(0, "bot", routes(&["*", "text"]))]);
        list.push(Claim {
            index: 1,
            name: "laptop",
            routes: routes(&["text"]),
            users: Some(&tester),
        });
        let owners = Owners::build(list).unwrap();
        let mut entries: Vec<(String, usize, Option<&str>)> = owners
            .entries()
            .map(|(route, i, user)| (route.to_string(), i, user))
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                ("*".to_owned(), 0, None),
                ("text".to_owned(), 0, None),
                ("text".to_owned(), 1, Some("oTester")),
            ]
        );
    }

    #[test]
    fn two_owners_listing_one_sender_on_one_route_conflict() {
        let a = vec!["oTester".to_owned()];
        let b = vec!["oX".to_owned(), "oTester".to_owned()];
        let conflict = Owners::build([
            Claim {
                index: 0,
                name: "laptop",
                routes: routes(&["text"]),
                users: Some(&a),
            },
            Claim {
                index: 1,
                name: "agent",
                routes: routes(&["text"]),
                users: Some(&b),
            },
        ])
        .unwrap_err();
        assert_eq!(
            (
                conflict.first.as_str(),
                conflict.second.as_str(),
                conflict.user.as_deref()
            ),
            ("laptop", "agent", Some("oTester"))
        );
        // Different senders, or different routes: no conflict.
        let c = vec!["oX".to_owned()];
        assert!(
            Owners::build([
                Claim {
                    index: 0,
                    name: "laptop",
                    routes: routes(&["text"]),
                    users: Some(&a)
                },
                Claim {
                    index: 1,
                    name: "agent",
                    routes: routes(&["text"]),
                    users: Some(&c)
                },
            ])
            .is_ok()
        );
    }

    #[test]
    fn most_specific_route_wins() {
        let owners = Owners::build(claims(&[
            (0, "bot", routes(&["text", "voice", "*"])),
            (1, "menu", routes(&["event:CLICK"])),
            (2, "marketing", routes(&["event:subscribe", "event:SCAN"])),
            (3, "events", routes(&["event"])),
        ]))
        .unwrap();
        assert_eq!(owners.owner(Some("text"), None, None), Some(0));
        assert_eq!(owners.owner(Some("image"), None, None), Some(0));
        assert_eq!(owners.owner(Some("event"), Some("CLICK"), None), Some(1));
        assert_eq!(owners.owner(Some("event"), Some("click"), None), Some(1));
        assert_eq!(
            owners.owner(Some("event"), Some("subscribe"), None),
            Some(2)
        );
        assert_eq!(owners.owner(Some("event"), Some("SCAN"), None), Some(2));
        assert_eq!(owners.owner(Some("event"), Some("VIEW"), None), Some(3));
        // An Event element on a message that is not an event is not an event.
        assert_eq!(owners.owner(Some("text"), Some("CLICK"), None), Some(0));
        assert_eq!(owners.owner(None, None, None), Some(0));
    }

    #[test]
    fn no_catch_all_leaves_the_rest_unowned() {
        let owners = Owners::build(claims(&[(0, "menu", routes(&["event:CLICK"]))])).unwrap();
        assert_eq!(owners.owner(Some("text"), None, None), None);
        assert_eq!(owners.owner(Some("event"), Some("VIEW"), None), None);
    }

    #[test]
    fn two_claims_of_one_route_conflict() {
        let conflict = Owners::build(claims(&[
            (0, "bot", routes(&["text", "*"])),
            (1, "menu", routes(&["event:click"])),
            (2, "other", routes(&["event:CLICK"])),
        ]))
        .unwrap_err();
        assert_eq!(conflict.route, Route::Event("click".into()));
        assert_eq!(
            (conflict.first.as_str(), conflict.second.as_str()),
            ("menu", "other")
        );
        assert!(Owners::build(claims(&[(0, "a", routes(&["text", "TEXT"]))])).is_ok());
    }

    #[test]
    fn parses_and_checks_against_filters() {
        assert_eq!(
            Route::parse("Event:CLICK"),
            Some(Route::Event("click".into()))
        );
        assert_eq!(Route::parse("event:"), None);
        assert_eq!(Route::parse("text:x"), None);
        assert_eq!(Route::parse(""), None);
        let types = vec!["text".to_owned()];
        let events = vec!["subscribe".to_owned()];
        assert!(Route::MsgType("text".into()).passes(Some(&types), None));
        assert!(!Route::MsgType("voice".into()).passes(Some(&types), None));
        assert!(!Route::Event("click".into()).passes(Some(&types), None));
        assert!(!Route::Event("click".into()).passes(None, Some(&events)));
        assert!(Route::Event("subscribe".into()).passes(None, Some(&events)));
        assert!(Route::Any.passes(Some(&types), Some(&events)));
    }
}
