//! Loading a configuration: the compiled-in defaults, the file, then the environment, extracted
//! with figment into [`Config`], and what goes wrong said the way the file says it.
//!
//! serde stops at the first error of a file, so one run would name one typo and the next run the
//! next. Instead, a key the file gets wrong (unknown, misspelt, of the wrong type or value) is
//! reported and taken out of a copy of the file, and the rest is extracted again, until nothing
//! is left to report or a required key is missing. Then the rules of [`Config::check`] run over
//! what loaded. Each error names its key as written (`accounts[0].targets[1].url`, never
//! figment's `default.accounts.0…`), a misspelt key or value gets a "did you mean", and an error
//! of the environment names its variable.

use std::collections::HashSet;

use figment::Figment;
use figment::error::{Error as FigmentError, Kind};
use figment::providers::{Env, Format as _, Serialized, Toml};

use super::{Config, ConfigError, DEFAULTS, all_of, invalid};

/// Rounds of "report, take out, extract again": far more than a file has mistakes.
const MAX_ROUNDS: usize = 64;
/// Configuration variables: `WECHAT_FANOUT_<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "WECHAT_FANOUT_";

/// Extracts a [`Config`] from the defaults, `file` (its text) and, with `env`, the environment;
/// every error found is reported at once.
pub(super) fn load(file: &str, env: bool) -> Result<Config, ConfigError> {
    let mut table: toml::Table = file
        .parse()
        .map_err(|e: toml::de::Error| invalid("TOML syntax", e.to_string().trim_end()))?;
    let defaults: toml::Table = DEFAULTS
        .parse()
        .map_err(|e: toml::de::Error| invalid("the compiled-in defaults", e.to_string()))?;
    let mut errors = Vec::new();
    let mut taken_out: HashSet<Vec<String>> = HashSet::new();
    // Tables where a wrong value was replaced by a stand-in: the rules are not checked there.
    let mut stand_ins: Vec<String> = Vec::new();
    let mut loaded = None;
    for _ in 0..MAX_ROUNDS {
        let mut figment = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Serialized::defaults(&table));
        if env {
            // Only SECTION__KEY variables are configuration; other WECHAT_FANOUT_* variables
            // (the config path, secrets named by token_env) are not.
            figment = figment.merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            );
        }
        let error = match figment.extract::<Config>() {
            Ok(config) => {
                loaded = Some(config);
                break;
            }
            Err(error) => error,
        };
        let mut fixed = false;
        for error in error {
            let path = full_path(&error);
            if matches!(error.kind, Kind::MissingField(_)) && taken_out.contains(&path) {
                // Missing because a wrong value was taken out: already reported.
                continue;
            }
            let in_file = lookup(&table, &path).is_some();
            errors.push(describe(&error, &path, &table, in_file));
            if !in_file || matches!(error.kind, Kind::MissingField(_)) {
                continue;
            }
            // A stand-in the rest can load with: the default where there is one, else the first
            // allowed value of a misspelt one; otherwise the key goes (a required key that
            // goes ends the rounds, as missing).
            let stand_in = match &error.kind {
                Kind::UnknownField(..) => None,
                Kind::UnknownVariant(_, expected) => {
                    lookup(&defaults, &path).cloned().or_else(|| {
                        expected
                            .first()
                            .map(|v| toml::Value::String((*v).to_owned()))
                    })
                }
                _ => lookup(&defaults, &path).cloned(),
            };
            match stand_in {
                Some(value) => {
                    replace(&mut table, &path, value);
                    let parent = &path[..path.len().saturating_sub(1)];
                    stand_ins.push(key_as_written(parent, &table));
                }
                None => remove(&mut table, &path),
            }
            taken_out.insert(path);
            fixed = true;
        }
        if !fixed {
            break;
        }
    }
    let Some(config) = loaded else {
        return all_of(errors).and(Err(invalid("configuration", "cannot be read")));
    };
    if let Err(rules) = config.check() {
        let rules = match rules {
            ConfigError::Several(more) => more,
            one => vec![one],
        };
        // What a stand-in broke is not the file's: its own error is reported already.
        errors.extend(rules.into_iter().filter(|e| {
            match e {
                ConfigError::Invalid { key, .. } => !stand_ins
                    .iter()
                    .any(|table| !table.is_empty() && key.starts_with(table.as_str())),
                _ => true,
            }
        }));
    }
    all_of(errors).map(|()| config)
}

/// The error's key path, with the missing field's name for a missing key.
fn full_path(error: &FigmentError) -> Vec<String> {
    let mut path = error.path.clone();
    let name: Option<&str> = match &error.kind {
        Kind::MissingField(name) => Some(name),
        Kind::DuplicateField(name) => Some(name),
        Kind::UnknownField(name, _) => Some(name),
        _ => None,
    };
    if let Some(name) = name
        && path.last().map(String::as_str) != Some(name)
    {
        path.push(name.to_owned());
    }
    path
}

/// `accounts[0].targets[1].url`: array elements by index, as TOML readers count them.
fn key_as_written(path: &[String], table: &toml::Table) -> String {
    let mut key = String::new();
    let mut at: Option<&toml::Value> = None;
    for (i, segment) in path.iter().enumerate() {
        if matches!(at, Some(toml::Value::Array(_))) {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
        at = match (i, at) {
            (0, _) => table.get(segment),
            (_, Some(toml::Value::Table(t))) => t.get(segment),
            (_, Some(toml::Value::Array(a))) => {
                segment.parse::<usize>().ok().and_then(|n| a.get(n))
            }
            _ => None,
        };
    }
    key
}

/// The value at `path` in the file's table, if the file has it.
fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut at = table.get(first)?;
    for segment in rest {
        at = match at {
            toml::Value::Table(t) => t.get(segment)?,
            toml::Value::Array(a) => a.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Puts `value` at `path` in the file's table (which has a value there).
fn replace(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(mut at) = table.get_mut(first) else {
        return;
    };
    for segment in rest {
        let next = match at {
            toml::Value::Table(t) => t.get_mut(segment),
            toml::Value::Array(a) => segment.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        let Some(next) = next else { return };
        at = next;
    }
    *at = value;
}

/// Takes the key at `path` out of the file's table; a wrong element of an array takes the
/// whole array out (taking the element alone would renumber those after it).
fn remove(table: &mut toml::Table, path: &[String]) {
    match path {
        [] => {}
        [key] => {
            table.remove(key);
        }
        [key, rest @ ..] => match table.get_mut(key) {
            Some(toml::Value::Table(inner)) => remove(inner, rest),
            Some(toml::Value::Array(items)) => {
                let item = rest[0].parse::<usize>().ok().and_then(|i| items.get_mut(i));
                match (item, &rest[1..]) {
                    (Some(toml::Value::Table(inner)), below) if !below.is_empty() => {
                        remove(inner, below)
                    }
                    _ => {
                        table.remove(key);
                    }
                }
            }
            _ => {}
        },
    }
}

/// One error as a person fixes it: the key as written (or the variable that set it) and what is
/// wrong, with a suggestion for a misspelling.
fn describe(
    error: &FigmentError,
    path: &[String],
    table: &toml::Table,
    in_file: bool,
) -> ConfigError {
    let written = key_as_written(path, table);
    let key = if in_file || matches!(error.kind, Kind::MissingField(_)) || !from_env(error) {
        written
    } else {
        format!(
            "{written} (environment variable {ENV_PREFIX}{})",
            path.join("__").to_uppercase()
        )
    };
    let message = match &error.kind {
        Kind::UnknownField(found, expected) => {
            let mut message = "unknown key".to_owned();
            if let Some(close) = closest(found, expected) {
                message.push_str(&format!("; did you mean {close}?"));
            }
            if !expected.is_empty() && expected.len() <= 24 {
                message.push_str(&format!(" (known here: {})", expected.join(", ")));
            }
            message
        }
        Kind::UnknownVariant(found, expected) => {
            let mut message = format!("unknown value {found:?}");
            if let Some(close) = closest(found, expected) {
                message.push_str(&format!("; did you mean {close:?}?"));
            }
            message.push_str(&format!(" (one of: {})", expected.join(", ")));
            message
        }
        Kind::MissingField(_) => "missing: this key is required here".to_owned(),
        Kind::DuplicateField(_) => "given twice".to_owned(),
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidLength(length, expected) => {
            format!("expected {expected}, found {length} elements")
        }
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    };
    invalid(key, message.replace('`', ""))
}

/// Whether the environment layer gave the value the error is about.
fn from_env(error: &FigmentError) -> bool {
    error
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"))
}

/// The expected name closest to `found`, if it is close enough to be a misspelling of it.
fn closest<'a>(found: &str, expected: &[&'a str]) -> Option<&'a str> {
    let found = found.to_lowercase();
    expected
        .iter()
        .map(|name| {
            (
                strsim::damerau_levenshtein(&found, &name.to_lowercase()),
                *name,
            )
        })
        .filter(|(distance, name)| *distance <= (name.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        load(text, false).unwrap_err().to_string()
    }

    #[test]
    fn every_mistake_of_a_file_is_named_by_its_key_with_a_suggestion() {
        let text = "[server]\nlistn = \"127.0.0.1:1\"\nmax_body_bytes = \"big\"\n\
                    [[accounts]]\nid = \"main\"\nkind = \"official_acount\"\ntoken = \"t\"\n\
                    [[accounts.targets]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\ntimout_ms = 5\n";
        let message = errors(text);
        assert!(message.starts_with("4 problems:"), "{message}");
        assert!(
            message.contains("server.listn: unknown key; did you mean listen?"),
            "{message}"
        );
        assert!(
            message.contains("server.max_body_bytes: expected"),
            "{message}"
        );
        assert!(
            message.contains(
                "accounts[0].kind: unknown value \"official_acount\"; did you mean \"official_account\"?"
            ),
            "{message}"
        );
        assert!(
            message.contains(
                "accounts[0].targets[0].timout_ms: unknown key; did you mean timeout_ms?"
            ),
            "{message}"
        );
        assert!(!message.contains("default."), "{message}");
        assert!(!message.contains('`'), "{message}");
        // Not reported: the kind that was taken out is not also "missing".
        assert!(!message.contains("missing"), "{message}");
    }

    #[test]
    fn a_missing_key_and_the_rules_are_reported_with_the_rest() {
        let text = "[admin]\nmax_event_streams = 0\nhostz = []\n[[accounts]]\nid = \"main\"\n\
                    kind = \"wecom\"\ntoken = \"t\"\n";
        let message = errors(text);
        assert!(
            message.contains("admin.hostz: unknown key; did you mean hosts?"),
            "{message}"
        );
        let missing = "[[accounts]]\nid = \"main\"\ntoken = \"t\"\n";
        let message = errors(missing);
        assert!(message.contains("accounts[0].kind: missing"), "{message}");
    }

    #[test]
    fn a_syntax_error_says_where() {
        let message = errors("[server\nlisten = 1\n");
        assert!(message.starts_with("TOML syntax: "), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn far_names_get_no_suggestion() {
        assert_eq!(
            closest("listn", &["listen", "max_body_bytes"]),
            Some("listen")
        );
        assert_eq!(closest("zzzzzz", &["listen"]), None);
        assert_eq!(
            closest("Official_Account", &["official_account"]),
            Some("official_account")
        );
    }
}
