//! Who answers WeChat: the reply owner of each callback, from the targets' `replies_to`.
//!
//! A route is a `MsgType` (`text`, `event`), an event (`event:CLICK`) or `*` (everything not
//! claimed otherwise); values compare ignoring ASCII case, like the targets' filters. The owner
//! of a callback is the target whose route matches it most specifically: its event, then its
//! `MsgType`, then `*`. `primary = "x"` is `replies_to = ["*"]` on x. Pure: built from names and
//! lists, so `config` validates with it and `targets` resolves with it, and neither duplicates
//! the rules.

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

/// Two targets claim the same route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub route: Route,
    pub first: String,
    pub second: String,
}

/// Route → the index of its owner among the account's targets.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    routes: HashMap<Route, usize>,
}

impl Owners {
    /// `claims`: (target index, target name, its routes). A claim listed twice by the same
    /// target is harmless; by two targets it is a conflict.
    pub fn build<'a>(
        claims: impl IntoIterator<Item = (usize, &'a str, Vec<Route>)>,
    ) -> Result<Owners, Conflict> {
        let mut routes: HashMap<Route, (usize, &'a str)> = HashMap::new();
        for (index, name, claimed) in claims {
            for route in claimed {
                match routes.get(&route) {
                    Some((other, other_name)) if *other != index => {
                        return Err(Conflict {
                            route,
                            first: (*other_name).to_owned(),
                            second: name.to_owned(),
                        });
                    }
                    _ => {
                        routes.insert(route, (index, name));
                    }
                }
            }
        }
        Ok(Owners {
            routes: routes.into_iter().map(|(r, (i, _))| (r, i)).collect(),
        })
    }

    /// The owner's index for a callback of this `MsgType` and `Event`, most specific first.
    pub fn owner(&self, msg_type: Option<&str>, event: Option<&str>) -> Option<usize> {
        let msg_type = msg_type.map(str::to_ascii_lowercase);
        let is_event = msg_type.as_deref() == Some("event");
        let by_event = event
            .filter(|_| is_event)
            .and_then(|e| self.routes.get(&Route::Event(e.to_ascii_lowercase())));
        by_event
            .or_else(|| msg_type.and_then(|t| self.routes.get(&Route::MsgType(t))))
            .or_else(|| self.routes.get(&Route::Any))
            .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(list: &[&str]) -> Vec<Route> {
        list.iter().map(|r| Route::parse(r).unwrap()).collect()
    }

    #[test]
    fn most_specific_route_wins() {
        let owners = Owners::build([
            (0, "bot", routes(&["text", "voice", "*"])),
            (1, "menu", routes(&["event:CLICK"])),
            (2, "marketing", routes(&["event:subscribe", "event:SCAN"])),
            (3, "events", routes(&["event"])),
        ])
        .unwrap();
        assert_eq!(owners.owner(Some("text"), None), Some(0));
        assert_eq!(owners.owner(Some("image"), None), Some(0));
        assert_eq!(owners.owner(Some("event"), Some("CLICK")), Some(1));
        assert_eq!(owners.owner(Some("event"), Some("click")), Some(1));
        assert_eq!(owners.owner(Some("event"), Some("subscribe")), Some(2));
        assert_eq!(owners.owner(Some("event"), Some("SCAN")), Some(2));
        assert_eq!(owners.owner(Some("event"), Some("VIEW")), Some(3));
        // An Event element on a message that is not an event is not an event.
        assert_eq!(owners.owner(Some("text"), Some("CLICK")), Some(0));
        assert_eq!(owners.owner(None, None), Some(0));
    }

    #[test]
    fn no_catch_all_leaves_the_rest_unowned() {
        let owners = Owners::build([(0, "menu", routes(&["event:CLICK"]))]).unwrap();
        assert_eq!(owners.owner(Some("text"), None), None);
        assert_eq!(owners.owner(Some("event"), Some("VIEW")), None);
    }

    #[test]
    fn two_claims_of_one_route_conflict() {
        let conflict = Owners::build([
            (0, "bot", routes(&["text", "*"])),
            (1, "menu", routes(&["event:click"])),
            (2, "other", routes(&["event:CLICK"])),
        ])
        .unwrap_err();
        assert_eq!(conflict.route, Route::Event("click".into()));
        assert_eq!(
            (conflict.first.as_str(), conflict.second.as_str()),
            ("menu", "other")
        );
        assert!(Owners::build([(0, "a", routes(&["text", "TEXT"]))]).is_ok());
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
