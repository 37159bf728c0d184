//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member. The eBPF programs read `task_struct` fields at offsets we pass
//! in at load time, which is what CO-RE relocations would do in C.
use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
/// Nesting deeper than this (anonymous members, arrays of arrays) is a corrupt BTF, not a kernel.
const MAX_DEPTH: u32 = 32;
/// Structs visited looking for one member: vmlinux's task_struct needs a few dozen.
const MAX_VISITS: u32 = 10_000;

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: String,
    size_or_type: u32,
    members: Vec<Member>,
    /// For arrays: element type and count.
    array: Option<(u32, u32)>,
}

pub struct Btf {
    /// Index = type id - 1.
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(off..off + 2).context("BTF truncated")?.try_into()?,
    ))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(off..off + 4).context("BTF truncated")?.try_into()?,
    ))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("kernel BTF is missing ({path}); a kernel built with CONFIG_DEBUG_INFO_BTF=y is required")
        })?;
        Self::parse(&data).with_context(|| format!("cannot parse {path}"))
    }

    pub fn parse(b: &[u8]) -> Result<Self> {
        if u16_at(b, 0)? != MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF strings out of range")?;
        let name = |off: u32| -> String {
            let s = &strings[(off as usize).min(strings.len())..];
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut types = Vec::new();
        let mut p = hdr_len + type_off;
        let end = p + type_len;
        while p < end {
            let name_off = u32_at(b, p)?;
            let info = u32_at(b, p + 4)?;
            let size_or_type = u32_at(b, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut array = None;
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => {
                    array = Some((u32_at(b, p)?, u32_at(b, p + 8)?));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let raw_off = u32_at(b, m + 8)?;
                        members.push(Member {
                            name: name(u32_at(b, m)?),
                            type_id: u32_at(b, m + 4)?,
                            bit_offset: if kind_flag {
                                raw_off & 0xff_ffff
                            } else {
                                raw_off
                            },
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12,      // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                k => bail!("unknown BTF kind {k}"),
            };
            p += extra;
            types.push(Type {
                kind,
                name: name(name_off),
                size_or_type,
                members,
                array,
            });
        }
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, t) in types.iter().enumerate() {
            if !t.name.is_empty() && (t.kind == KIND_STRUCT || t.kind == KIND_UNION) {
                by_name
                    .entry(t.name.clone())
                    .or_default()
                    .push(i as u32 + 1);
            }
        }
        Ok(Self { types, by_name })
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset and size of `member` in struct `name`, looking through anonymous structs and
    /// unions (where the kernel hides many fields).
    pub fn member(&self, name: &str, member: &str) -> Option<(u32, u32)> {
        let id = *self
            .by_name
            .get(name)?
            .iter()
            .find(|&&id| self.ty(id).is_some_and(|t| t.kind == KIND_STRUCT))?;
        let mut budget = MAX_VISITS;
        let (bits, type_id) = self.find(self.ty(id)?, member, 0, 0, &mut budget)?;
        let size = self.size_of(type_id, 0)?;
        Some((bits / 8, size))
    }

    /// `depth` and `budget` bound the descent: a corrupt BTF can make a struct contain itself,
    /// or nest anonymous members that fan out into exponentially many paths.
    fn find(
        &self,
        t: &Type,
        member: &str,
        base_bits: u32,
        depth: u32,
        budget: &mut u32,
    ) -> Option<(u32, u32)> {
        if depth > MAX_DEPTH || *budget == 0 {
            return None;
        }
        *budget -= 1;
        for m in &t.members {
            if m.name == member {
                return Some((base_bits.checked_add(m.bit_offset)?, m.type_id));
            }
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            if let Some(inner) = self
                .resolve(m.type_id)
                .filter(|i| i.kind == KIND_STRUCT || i.kind == KIND_UNION)
                && let Some(bits) = base_bits.checked_add(m.bit_offset)
                && let Some(found) = self.find(inner, member, bits, depth + 1, budget)
            {
                return Some(found);
            }
        }
        None
    }

    fn size_of(&self, id: u32, depth: u32) -> Option<u32> {
        if depth > MAX_DEPTH {
            return None;
        }
        let t = self.resolve(id)?;
        match t.kind {
            1 | KIND_STRUCT | KIND_UNION | 6 | 16 | 19 => Some(t.size_or_type), // INT, STRUCT, UNION, ENUM, FLOAT, ENUM64
            2 => Some(8),                                                       // PTR
            3 => {
                let (elem, n) = t.array?;
                self.size_of(elem, depth + 1)?.checked_mul(n)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's own BTF: task_struct's fields must be where the kernel says, and
    /// `pid`/`tgid` are 4-byte ints next to each other.
    #[test]
    fn finds_task_struct_fields_in_vmlinux() {
        let btf = Btf::from_sys_fs().unwrap();
        let (pid, pid_size) = btf.member("task_struct", "pid").unwrap();
        let (tgid, tgid_size) = btf.member("task_struct", "tgid").unwrap();
        assert_eq!((pid_size, tgid_size), (4, 4));
        assert_eq!(tgid, pid + 4, "tgid follows pid in task_struct");
        let (_, comm_size) = btf.member("task_struct", "comm").unwrap();
        assert_eq!(comm_size, 16);
        assert!(btf.member("task_struct", "no_such_field").is_none());
        assert!(btf.member("no_such_struct", "pid").is_none());
    }

    /// A word of a type record: a value, or a name (interned into the string section).
    enum W {
        V(u32),
        N(&'static str),
    }
    use W::{N, V};

    /// A BTF blob from type records (name, info, size_or_type, then the kind's extra words).
    fn blob(types: &[Vec<W>]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut t = Vec::new();
        for w in types.iter().flatten() {
            let v = match w {
                V(v) => *v,
                N("") => 0,
                N(n) => {
                    let off = strings.len() as u32;
                    strings.extend(n.as_bytes());
                    strings.push(0);
                    off
                }
            };
            t.extend(v.to_le_bytes());
        }
        let mut b = Vec::new();
        let hdr = [
            0x0001_eb9f,
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ];
        for w in hdr {
            b.extend(w.to_le_bytes());
        }
        b.extend(t);
        b.extend(strings);
        b
    }

    const fn strukt(members: u32) -> W {
        V(KIND_STRUCT << 24 | members)
    }

    /// Found by fuzz/fuzz_targets/btf.rs: a struct whose anonymous member is the struct itself
    /// recursed until the stack overflowed.
    #[test]
    fn self_containing_struct_is_not_followed_forever() {
        // type 1: struct s { <anon>: struct s @ bit 0 }
        let b = blob(&[vec![N("s"), strukt(1), V(8), N(""), V(1), V(0)]]);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.member("s", "missing"), None);
    }

    /// Found by fuzz/fuzz_targets/btf.rs (a timeout): anonymous members that each hold two
    /// anonymous members of the next struct make 2^depth paths to search.
    #[test]
    fn fanned_out_anonymous_members_end_quickly() {
        // type i (1..=30): struct { <anon>: type i+1, <anon>: type i+1 }; type 31: empty struct
        let mut types: Vec<Vec<W>> = (1..=30)
            .map(|i| {
                vec![
                    N(""),
                    strukt(2),
                    V(8),
                    N(""),
                    V(i + 1),
                    V(0),
                    N(""),
                    V(i + 1),
                    V(0),
                ]
            })
            .collect();
        types[0][0] = N("s");
        types.push(vec![N(""), strukt(0), V(0)]);
        let btf = Btf::parse(&blob(&types)).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(btf.member("s", "missing"), None);
        // 2^30 paths without the budget (minutes); a few ms with it. Generous for slow CI.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }

    /// Found by fuzz/fuzz_targets/btf.rs: an array of itself recursed in size_of.
    #[test]
    fn self_containing_array_has_no_size() {
        // type 1: struct s { a: type 2 }; type 2: array of type 2
        let b = blob(&[
            vec![N("s"), strukt(1), V(8), N("a"), V(2), V(0)],
            vec![N(""), V(3 << 24), V(0), V(2), V(0), V(4)],
        ]);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.member("s", "a"), None);
    }

    /// Found by fuzz/fuzz_targets/btf.rs: an anonymous member's bit offset plus the inner
    /// member's overflowed u32 (a panic in debug builds, a wrong offset in release).
    #[test]
    fn member_offset_overflow_is_not_an_offset() {
        // type 1: struct s { <anon>: struct t @ bit u32::MAX }; 2: struct t { x: int @ bit 8 }
        let b = blob(&[
            vec![N("s"), strukt(1), V(8), N(""), V(2), V(u32::MAX)],
            vec![N("t"), strukt(1), V(8), N("x"), V(3), V(8)],
            vec![N("int"), V(1 << 24), V(4), V(32)],
        ]);
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.member("s", "x"), None);
        // The same layout at a sane offset is found (the test builds valid BTF).
        let b = blob(&[
            vec![N("s"), strukt(1), V(8), N(""), V(2), V(64)],
            vec![N("t"), strukt(1), V(8), N("x"), V(3), V(8)],
            vec![N("int"), V(1 << 24), V(4), V(32)],
        ]);
        assert_eq!(Btf::parse(&b).unwrap().member("s", "x"), Some((9, 4)));
    }

    #[test]
    fn rejects_non_btf() {
        assert!(Btf::parse(b"\x7fELF....................").is_err());
        assert!(Btf::parse(&[]).is_err());
    }
}
