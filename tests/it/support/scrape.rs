//! A scrape of `/metrics`, parsed the way Prometheus reads the text format: one sample per line,
//! `name{label="value",…} number`, comments and `# EOF` skipped. Tests compare whole families
//! (every label set and its value) so that an unexpected series fails as loudly as a wrong count.
//! The label `instance_name`, on every per-instance series, is kept apart from the others (one
//! proxy, one name): [`Scrape::instance_names`] says which families carry it.

use std::collections::BTreeMap;

use reqwest::Method;

use super::{Proxy, eventually_async};

/// Every sample of one scrape.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    /// The text as served, for failure messages.
    pub(crate) text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    /// Per sample (in the order of `samples`), its `instance_name`, if it has one.
    instances: Vec<Option<String>>,
}

impl Scrape {
    /// `GET /metrics` on the proxy's admin listener: asserts 200 and the OpenMetrics content
    /// type Prometheus asks for, then parses.
    pub(crate) async fn fetch(proxy: &Proxy) -> Scrape {
        let answer = proxy.admin(Method::GET, "/metrics").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let content_type = answer.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        Scrape::parse(&answer.text())
    }

    /// The family `name` (see [`Scrape::family`]) once it has a series: waits (bounded) for
    /// the first thing it counts.
    pub(crate) async fn first_counted(proxy: &Proxy, name: &str) -> BTreeMap<String, f64> {
        eventually_async(&format!("a series of {name}"), || async {
            let family = Scrape::fetch(proxy).await.family(name);
            (!family.is_empty()).then_some(family)
        })
        .await
    }

    pub(crate) fn parse(text: &str) -> Scrape {
        let (samples, instances) = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (name, mut labels, value) =
                    parse_line(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
                let instance = labels.remove("instance_name");
                ((name, labels, value), instance)
            })
            .unzip();
        Scrape {
            text: text.to_owned(),
            samples,
            instances,
        }
    }

    /// The `instance_name` values of the samples of `name` (`None`: a sample without one).
    pub(crate) fn instance_names(&self, name: &str) -> std::collections::BTreeSet<Option<String>> {
        self.samples
            .iter()
            .zip(&self.instances)
            .filter(|((n, _, _), _)| n == name)
            .map(|(_, instance)| instance.clone())
            .collect()
    }

    /// Every series of `name` (the full sample name: `…_total`, `…_bucket`, `…_count`), keyed by
    /// its labels written `key=value` in key order and joined by `,` (`""` for none).
    pub(crate) fn family(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, labels, value)| {
                let key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (key.join(","), *value)
            })
            .collect()
    }

    /// The value of the one series of `name` with exactly these labels.
    pub(crate) fn value(&self, name: &str, labels: &str) -> f64 {
        *self.family(name).get(labels).unwrap_or_else(|| {
            panic!(
                "no series {name}{{{labels}}}; the family is {:?}\n{}",
                self.family(name),
                self.text
            )
        })
    }

    /// The cumulative buckets of the histogram `name` (without `_bucket`) with these labels
    /// (besides `le`): (upper bound, observations at or below it), ascending.
    pub(crate) fn buckets(&self, name: &str, labels: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .filter_map(|(_, all, value)| {
                let mut rest = all.clone();
                let le = number(&rest.remove("le")?)?;
                let key: Vec<String> = rest.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (key.join(",") == labels).then_some((le, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            !buckets.is_empty(),
            "no buckets {name}{{{labels}}}\n{}",
            self.text
        );
        buckets
    }
}

/// `[("account=main,…", 2.0), …]` as a family, for `assert_eq!` against [`Scrape::family`].
pub(crate) fn family(series: &[(&str, f64)]) -> BTreeMap<String, f64> {
    series.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (name, rest) = match line.find('{') {
        Some(brace) if brace < line.find(' ')? => (&line[..brace], &line[brace + 1..]),
        _ => {
            let (name, value) = line.split_once(' ')?;
            return Some((name.to_owned(), BTreeMap::new(), number(value)?));
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices();
    loop {
        // key="value" pairs separated by commas, up to the closing brace.
        let mut key = String::new();
        let end = loop {
            match chars.next()? {
                (i, '}') if key.is_empty() => break Some(i),
                (_, '=') => break None,
                (_, ',') if key.is_empty() => {}
                (_, c) => key.push(c),
            }
        };
        if let Some(end) = end {
            let value = rest[end + 1..].trim();
            // Exemplars or timestamps after the value are not used by this service.
            let value = value.split(' ').next()?;
            return Some((name.to_owned(), labels, number(value)?));
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}

fn number(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}
