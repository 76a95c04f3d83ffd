//! `aqpim presets list` and `aqpim presets show NAME`: the model, system and
//! device presets compiled into the binary, by name, and the TOML text of
//! one, with its source comments, to save, edit and pass back as a file.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum PresetsCommand {
    /// Every model, system and device preset by name, with a one-line description.
    List {
        /// One JSON object per line (`kind`, `name`, `description`).
        #[arg(long)]
        json: bool,
    },
    /// A preset's TOML text as compiled in, with its source comments: save it
    /// (`> mine.toml`), edit it and pass it back as `--model`, `--system` or
    /// `--device mine.toml`. A device that `extends` another prints its own
    /// text after a note naming the preset it extends (whose keys it
    /// replaces); `--resolved` prints the merged figures instead.
    Show {
        /// The preset (`aqpim presets list` names them).
        name: String,
        /// Print the figures as read, every key resolved (a device's
        /// `extends` merged), as TOML without the comments.
        #[arg(long)]
        resolved: bool,
    },
}

/// What a preset describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Model,
    System,
    Device,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::System => "system",
            Kind::Device => "device",
        }
    }
}

#[derive(Debug, Serialize)]
struct Entry {
    kind: Kind,
    name: &'static str,
    description: String,
}

/// Every compiled-in preset: kind, name, TOML text.
fn all() -> impl Iterator<Item = (Kind, &'static str, &'static str)> {
    let models = aqpim_system::presets::MODEL_PRESETS
        .iter()
        .map(|&(n, t)| (Kind::Model, n, t));
    let systems = aqpim_system::presets::SYSTEM_PRESETS
        .iter()
        .map(|&(n, t)| (Kind::System, n, t));
    let devices = aqpim_pim::PRESETS
        .iter()
        .map(|&(n, t)| (Kind::Device, n, t));
    models.chain(systems).chain(devices)
}

/// The longest description `list` takes from a file's opening comment, in
/// characters (a device's `description` is printed whole).
const MAX_DESCRIPTION_CHARS: usize = 110;

/// A preset's one line: a device's `description`, else the first sentence
/// of the file's opening comment (cut to [`MAX_DESCRIPTION_CHARS`]).
fn description(kind: Kind, name: &str, text: &str) -> String {
    if kind == Kind::Device {
        if let Ok(d) = aqpim_pim::DeviceSpec::preset(name) {
            if !d.description.is_empty() {
                return d.description;
            }
        }
    }
    let comment: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let joined = comment.join(" ");
    // A sentence ends at a full stop before a capital (not `et al. 2023`).
    let end = joined
        .match_indices(". ")
        .map(|(i, _)| i)
        .find(|&i| joined[i + 2..].starts_with(|c: char| c.is_uppercase()));
    let sentence = match end {
        Some(i) => &joined[..=i],
        None => joined.as_str(),
    };
    if sentence.chars().count() > MAX_DESCRIPTION_CHARS {
        let cut: String = sentence.chars().take(MAX_DESCRIPTION_CHARS - 3).collect();
        format!("{}...", cut.trim_end())
    } else {
        sentence.to_string()
    }
}

fn list(json: bool) -> Result<()> {
    let mut o = std::io::stdout().lock();
    let entries: Vec<Entry> = all()
        .map(|(kind, name, text)| Entry {
            kind,
            name,
            description: description(kind, name, text),
        })
        .collect();
    if json {
        for e in &entries {
            writeln!(o, "{}", serde_json::to_string(e)?)?;
        }
        return Ok(());
    }
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    writeln!(o, "{:<7} {:<width$}  description", "kind", "name")?;
    for e in &entries {
        writeln!(
            o,
            "{:<7} {:<width$}  {}",
            e.kind.name(),
            e.name,
            e.description
        )?;
    }
    writeln!(
        o,
        "`aqpim presets show NAME` prints one as TOML; `--set SECTION.KEY=VALUE` overrides a figure"
    )?;
    Ok(())
}

/// The `extends` of a device's text, if any.
fn extends(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("extends")?.as_str().map(str::to_string)
}

/// The figures of a preset as read, every key resolved, as TOML.
fn resolved(kind: Kind, name: &str) -> Result<String> {
    Ok(match kind {
        Kind::Model => toml::to_string(&aqpim_system::presets::model(name)?)?,
        Kind::System => toml::to_string(&aqpim_system::presets::system(name)?)?,
        Kind::Device => aqpim_pim::DeviceSpec::preset(name)?.to_toml_string()?,
    })
}

fn show(name: &str, resolve: bool) -> Result<()> {
    let Some((kind, name, text)) = all().find(|&(_, n, _)| n == name) else {
        bail!(
            "no preset `{}` (known: {})",
            crate::limits::cut(name),
            all().map(|(_, n, _)| n).collect::<Vec<_>>().join(", ")
        );
    };
    let mut o = std::io::stdout().lock();
    if resolve {
        write!(o, "{}", resolved(kind, name)?)?;
        return Ok(());
    }
    if let Some(base) = extends(text) {
        writeln!(
            o,
            "# Note (aqpim presets show): this device extends the preset `{base}` \
             (`aqpim presets show {base}`);\n# the keys below replace that preset's, \
             table by table and key by key. `--resolved` prints the merge.\n#"
        )?;
    }
    write!(o, "{text}")?;
    Ok(())
}

pub fn run(cmd: PresetsCommand) -> Result<()> {
    match cmd {
        PresetsCommand::List { json } => list(json),
        PresetsCommand::Show { name, resolved } => show(&name, resolved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_has_a_description_and_resolves() {
        for (kind, name, text) in all() {
            let d = description(kind, name, text);
            assert!(!d.is_empty(), "{name}");
            // A device's own `description` is printed whole.
            assert!(
                kind == Kind::Device || d.chars().count() <= MAX_DESCRIPTION_CHARS,
                "{name}: {d}"
            );
            assert!(resolved(kind, name).is_ok(), "{name}");
        }
    }

    #[test]
    fn names_are_unique_across_kinds() {
        let names: Vec<_> = all().map(|(_, n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }
}
