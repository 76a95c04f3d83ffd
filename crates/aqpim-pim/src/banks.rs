//! The bank state machine of one channel: which row each bank holds open,
//! each command's state prerequisite (the rules no amount of waiting
//! satisfies, kept apart from the timing rules of `timing.rs` as Ramulator 2
//! keeps them), and the transition each command makes. The simulator drives
//! one per channel; the trace checker replays bank state by its own code.

use crate::command::Command;

/// The open rows of a channel's banks.
#[derive(Debug, Clone)]
pub(crate) struct Banks {
    /// Per channel-local bank: its open row.
    open: Vec<Option<u32>>,
    /// Banks with a row open.
    open_count: usize,
}

impl Banks {
    /// `n` banks, all closed.
    pub(crate) fn new(n: usize) -> Banks {
        Banks {
            open: vec![None; n],
            open_count: 0,
        }
    }

    /// The open row of each bank.
    pub(crate) fn open(&self) -> &[Option<u32>] {
        &self.open
    }

    /// Whether any bank has a row open.
    pub(crate) fn any_open(&self) -> bool {
        self.open_count > 0
    }

    /// Whether `cmd` may issue at `bank` in this state; otherwise the
    /// violated rule and what is wrong.
    pub(crate) fn prerequisite(
        &self,
        cmd: Command,
        bank: usize,
    ) -> Result<(), (&'static str, String)> {
        let (banks, open) = (self.open.len(), self.open_count);
        match cmd {
            Command::Act => match self.open[bank] {
                Some(r) => Err(("bank-closed", format!("row {r} is open; PRE it first"))),
                None => Ok(()),
            },
            Command::ActAb | Command::Ref if open > 0 => Err((
                "all-banks-closed",
                format!("{open} bank(s) are open; PREAB first"),
            )),
            Command::Rd | Command::Wr | Command::Stc if self.open[bank].is_none() => {
                Err(("row-open", "the bank has no open row; ACT first".into()))
            }
            _ if cmd.is_pim_column() && open < banks => Err((
                "all-banks-open",
                format!("{open} of {banks} banks have an open row; ACTAB first"),
            )),
            _ => Ok(()),
        }
    }

    /// Applies `cmd` at `bank` (ACT and ACTAB open `row`) and returns the
    /// row it works on: the one it opens, or the open row a column command
    /// reads or writes (for an all-bank one, the row ACTAB opened in every
    /// bank); `row` for any other command.
    pub(crate) fn apply(&mut self, cmd: Command, bank: usize, row: u32) -> u32 {
        match cmd {
            Command::Act => {
                self.open[bank] = Some(row);
                self.open_count += 1;
            }
            Command::Pre if self.open[bank].take().is_some() => self.open_count -= 1,
            Command::ActAb => {
                self.open.fill(Some(row));
                self.open_count = self.open.len();
            }
            Command::PreAb => {
                self.open.fill(None);
                self.open_count = 0;
            }
            Command::Rd | Command::Wr | Command::Stc => return self.open[bank].unwrap_or(row),
            _ if cmd.is_pim_column() => return self.open.first().copied().flatten().unwrap_or(row),
            _ => {}
        }
        row
    }
}
