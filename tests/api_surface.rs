//! The shape of the public API, read from the sources: at most 30 items at the crate root, each
//! one placed in the crate docs' anatomy section, and one vocabulary ("close" for a service,
//! "shutdown" for the program, "stop" only for a worker's stop signal).

use std::path::{Path, PathBuf};

const ROOT_ITEM_LIMIT: usize = 30;

fn source(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names `lib.rs` makes public at the crate root: its `pub use` items and `pub mod`s.
fn root_items(lib: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut statement = String::new();
    for line in lib.lines().map(str::trim) {
        if let Some(module) = line.strip_prefix("pub mod ") {
            items.push(module.trim_end_matches(';').to_owned());
            continue;
        }
        if line.starts_with("pub use ") || !statement.is_empty() {
            statement.push_str(line);
            statement.push(' ');
            if !line.ends_with(';') {
                continue;
            }
            let body = std::mem::take(&mut statement);
            let names = match (body.find('{'), body.rfind('}')) {
                (Some(open), Some(close)) => body[open + 1..close].to_owned(),
                _ => body.rsplit("::").next().unwrap().to_owned(),
            };
            for name in names.split(',') {
                let name = name.trim().trim_end_matches(';').trim();
                let name = name.rsplit(" as ").next().unwrap();
                if !name.is_empty() {
                    items.push(name.to_owned());
                }
            }
        }
    }
    items
}

/// The crate docs: the `//!` lines of `lib.rs`.
fn crate_docs(lib: &str) -> String {
    lib.lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_root_is_small_and_every_item_is_in_the_anatomy() {
    let lib = source("src/lib.rs");
    let items = root_items(&lib);
    assert!(
        items.len() >= 20,
        "the parser found too few items: {items:?}"
    );
    assert!(
        items.len() <= ROOT_ITEM_LIMIT,
        "{} items at the crate root, more than {ROOT_ITEM_LIMIT}: {items:?}",
        items.len()
    );
    let docs = crate_docs(&lib);
    let anatomy = docs
        .split("# Anatomy of the crate")
        .nth(1)
        .and_then(|rest| rest.split("\n # ").next())
        .expect("an `# Anatomy of the crate` section in the crate docs");
    let missing: Vec<_> = items
        .iter()
        .filter(|item| !anatomy.contains(&format!("[`{item}`]")))
        .collect();
    assert!(
        missing.is_empty(),
        "root items not placed in the anatomy: {missing:?}"
    );
}

/// The name at the start of `rest`: `Name<T> {` gives `Name`.
fn type_name(rest: &str) -> String {
    rest.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap()
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every public name in the sources, with the type whose `impl` or `enum` holds it (empty for
/// free items): `pub fn`, `pub const`, `pub struct`, `pub enum`, `pub type` and the variants of
/// public enums. Items in `#[cfg(test)]` modules and crate-private items are not public.
fn public_names() -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]\nmod ").next().unwrap();
        let mut owner = String::new();
        let mut in_enum = false;
        let mut in_trait = false;
        for line in text.lines() {
            if !line.is_empty() && !line.starts_with(' ') {
                in_enum = false;
                in_trait = false;
                owner.clear();
                if let Some(rest) = line.strip_prefix("impl") {
                    // `impl<T> Type<T> {`, `impl Trait for Type {`: the type is last.
                    let head = rest.split('{').next().unwrap();
                    let head = head.rsplit(" for ").next().unwrap();
                    let head = head.split(" where").next().unwrap();
                    let word = head.split_whitespace().last().unwrap_or("");
                    owner = word.split('<').next().unwrap().to_owned();
                } else if let Some(rest) = line.strip_prefix("pub enum ") {
                    owner = type_name(rest);
                    in_enum = true;
                } else if let Some(rest) = line.strip_prefix("pub trait ") {
                    owner = type_name(rest);
                    in_trait = true;
                }
            }
            // A public trait's methods are public, without `pub`.
            if let (true, Some(rest)) = (in_trait, line.strip_prefix("    fn ")) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push((file.display().to_string(), owner.clone(), name));
            }
            let trimmed = line.trim();
            for kind in [
                "pub fn ",
                "pub const ",
                "pub struct ",
                "pub enum ",
                "pub type ",
            ] {
                if let Some(rest) = trimmed.strip_prefix(kind) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.push((file.display().to_string(), owner.clone(), name));
                }
            }
            if in_enum && line.starts_with("    ") && !line.starts_with("     ") {
                let variant: String = trimmed
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if variant.chars().next().is_some_and(char::is_uppercase) {
                    names.push((file.display().to_string(), owner.clone(), variant));
                }
            }
        }
    }
    names
}

#[test]
fn one_vocabulary_close_for_services_shutdown_for_the_program() {
    let names = public_names();
    assert!(
        names.len() > 100,
        "the scan found too few names: {}",
        names.len()
    );
    assert!(
        names
            .iter()
            .any(|(_, o, n)| o == "StateMachine" && n == "close_once"),
        "the scan must see methods and their types"
    );
    assert!(
        names.iter().any(|(_, o, n)| o == "Service" && n == "close"),
        "the scan must see the methods of public traits"
    );
    // "stop" belongs to the worker's stop signal only.
    let stop: Vec<_> = names
        .iter()
        .filter(|(_, _, name)| name.to_lowercase().contains("stop"))
        .filter(|(_, owner, name)| owner != "StopSignal" && name != "StopSignal")
        .collect();
    assert!(
        stop.is_empty(),
        "\"stop\" names a service's close in: {stop:?}"
    );
    // "shutdown" belongs to the program: the runner, its handle, report and phases.
    let program = [
        "Runner",
        "RunHandle",
        "RunReport",
        "RunPhase",
        "ShutdownCause",
        "Phase",
    ];
    let shutdown: Vec<_> = names
        .iter()
        .filter(|(_, _, name)| name.to_lowercase().contains("shutdown"))
        .filter(|(_, owner, name)| !program.contains(&owner.as_str()) && name != "ShutdownCause")
        .collect();
    assert!(
        shutdown.is_empty(),
        "\"shutdown\" names something else than the program's: {shutdown:?}"
    );
}

#[test]
fn metric_names_and_labels_say_close() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics"),
        &mut files,
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let strings = line.split('"').skip(1).step_by(2);
            for s in strings {
                assert!(
                    !s.contains("stop"),
                    "{}:{}: a metric string says \"stop\": {s:?}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
