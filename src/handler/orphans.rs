//! What a previous process's `exec:` jobs may have left running: finding a spooled process group again after a
//! crash and killing it, and the start time that tells a job's process from a stranger with a reused pid.
//!
//! Owns: reading `/proc/<pid>/stat` (the process group and the start time, field 22, in clock ticks since boot),
//! and the decision to signal a spooled group. Must never: kill a process group whose leader is alive with another
//! start time (its pid was reused), kill a leaderless group with a member that started before the job's leader (it
//! is not the job's), or panic on anything `/proc` says. Linux only, like the parent-death signal that makes most of
//! this unnecessary. A zombie counts as gone: it runs nothing.

use std::fs;
use std::io;

use rustix::process::{Pid, Signal, kill_process_group};

/// A process's process group and start time, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The process group id (field 5).
    pub pgrp: i32,
    /// When the process started, in clock ticks since boot (field 22).
    pub start_time: u64,
}

/// Reads a process's group and start time; `None` when the process does not exist, is a zombie (it runs nothing;
/// who reaps it is not ours to decide), or is not readable.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = text.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold spaces and parentheses
/// itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: field 3 (state) is at index 0, so field N is at index N - 3.
    Some(ProcStat {
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// The start time of a process this client just started (for the spool), `None` if it cannot be read.
pub fn start_time_of(pid: u32) -> Option<u64> {
    proc_stat(i32::try_from(pid).ok()?).map(|s| s.start_time)
}

/// What [`kill_orphaned_group`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Orphans {
    /// The group was still there: every process in it was sent SIGKILL.
    Killed {
        /// How many processes the group held.
        processes: usize,
    },
    /// Nothing is left of the group (the parent-death signal, or the job ended on its own).
    Gone,
    /// A process with the group's pid runs with another start time: the pid was reused; left alone.
    PidReused,
    /// The group's leader is gone and a process in the group started before it: not the job's; left alone.
    NotTheJobs,
}

impl std::fmt::Display for Orphans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Orphans::Killed { processes } => write!(f, "killed its {processes} process(es)"),
            Orphans::Gone => f.write_str("nothing of it is left"),
            Orphans::PidReused => {
                f.write_str("its pid now belongs to another process (a reused pid): left alone")
            }
            Orphans::NotTheJobs => f.write_str(
                "its leader is gone and a process in the group is not the job's (its start time does not fit): \
                 left alone",
            ),
        }
    }
}

/// Kills what is left of an `exec:` job's process group spooled by a previous process of this client: the group
/// `pgid` whose leader started at `start_time`.
///
/// - The leader alive with that start time: the group is the job's; SIGKILL to all of it.
/// - A process with that pid and another start time: the pid was reused; nothing is signalled.
/// - The leader gone: Linux does not reuse a pid while a process group of that id exists, so the processes left in
///   group `pgid` are the job's (children of its shell, which the parent-death signal does not reach), unless the
///   group died out and the id was taken again meanwhile by a process that made itself a group leader, forked and
///   exited before this start: rare, and checked as far as the record allows, as every member must have started
///   at or after the job's leader; otherwise nothing is signalled.
pub fn kill_orphaned_group(pgid: i32, start_time: u64) -> io::Result<Orphans> {
    // Never 0 or 1 (our own group, every process), nor a negative number a valid record cannot hold (checked
    // before `Pid::from_raw`, which asserts a pid is not negative).
    if pgid <= 1 {
        return Ok(Orphans::NotTheJobs);
    }
    let Some(group) = Pid::from_raw(pgid) else {
        return Ok(Orphans::NotTheJobs);
    };
    let members: Vec<ProcStat> = match proc_stat(pgid) {
        Some(leader) if leader.start_time != start_time => return Ok(Orphans::PidReused),
        Some(leader) if leader.pgrp != pgid => return Ok(Orphans::PidReused),
        Some(_) => members_of(pgid)?,
        None => {
            let members = members_of(pgid)?;
            if members.is_empty() {
                return Ok(Orphans::Gone);
            }
            if members.iter().any(|m| m.start_time < start_time) {
                return Ok(Orphans::NotTheJobs);
            }
            members
        }
    };
    match kill_process_group(group, Signal::KILL) {
        Ok(()) => Ok(Orphans::Killed {
            processes: members.len().max(1),
        }),
        // The group emptied between the look and the kill.
        Err(rustix::io::Errno::SRCH) => Ok(Orphans::Gone),
        Err(e) => Err(e.into()),
    }
}

/// Every process whose group is `pgid`.
fn members_of(pgid: i32) -> io::Result<Vec<ProcStat>> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A process that exits while we look is simply not counted.
        if let Some(stat) = proc_stat(pid)
            && stat.pgrp == pgid
        {
            members.push(stat);
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_from_the_last_parenthesis_of_the_name() {
        let text = "4242 (sh (weird) name) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 2 3 4";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                pgrp: 4242,
                start_time: 987_654
            })
        );
        assert_eq!(parse_stat("4242 (sh) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_start_time_is_readable_and_stable() {
        let ours = start_time_of(std::process::id()).expect("/proc/self/stat");
        assert_eq!(start_time_of(std::process::id()), Some(ours));
    }

    #[test]
    fn a_record_that_names_no_group_kills_nothing() {
        assert_eq!(kill_orphaned_group(0, 1).unwrap(), Orphans::NotTheJobs);
        assert_eq!(kill_orphaned_group(1, 1).unwrap(), Orphans::NotTheJobs);
        assert_eq!(kill_orphaned_group(-5, 1).unwrap(), Orphans::NotTheJobs);
    }
}
