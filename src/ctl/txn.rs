//! `keel ctl txn`: etcdctl 3.4/3.5's `txn`, for scripts and operators who already write its input.
//!
//! Standard input holds three sections, each ended by an empty line (or by the end of the input):
//! compares, the requests to run when every compare holds, and the requests to run otherwise.
//!
//! ```text
//! mod("key1") > "0"
//!
//! put key1 "overwrote-key1"
//!
//! put key1 "created-key1"
//! put key2 "some extra key"
//! ```
//!
//! A compare is `TARGET("KEY") OP "VALUE"` with TARGET one of `version`/`ver`, `create`/`c`,
//! `mod`/`m`, `value`/`val` or `lease` (the value in hex), OP one of `=`, `!=`, `<`, `>`, and KEY and
//! VALUE quoted as Go quotes strings (`"..."` with Go's escapes, or `` `raw` ``), since etcdctl
//! reads them with Go's `%q`. A request is an etcdctl command line — `get`, `put` or `del` with
//! their flags — split into words as etcdctl's `Argify` does: `"..."` (Go escapes), `'...'` (raw) or
//! a bare run of non-space characters.
//!
//! Output is etcdctl's: `SUCCESS` or `FAILURE`, then for each response an empty line and what
//! `get`, `put` or `del` would print; `-w json` is the `TxnResponse` as Go's `encoding/json` writes
//! it (etcdctl's JSON printer). FAILURE is not an error: the exit code is 0 either way.
//!
//! Invariants: the whole input is read and parsed before any connection is made, so bad input sends
//! nothing; every parse error names the line's number and text and what is wrong; the one request
//! carries the command timeout. Keys and values are bytes (`\xNN` may make them non-UTF-8).
//!
//! Deliberate differences from etcdctl, all on input etcdctl rejects or misreads: the end of the
//! input ends a section (etcdctl fails with `EOF` unless every section has its empty line); an
//! unknown operator is an error (etcdctl panics); text after a compare's value, an unterminated
//! quote or text glued to a closing quote is an error (etcdctl ignores or splits it); a `put`
//! without a value is an error (etcdctl would read the value from the already consumed input);
//! flags do not leak from one request line to the next (etcdctl's global flag variables do); and a
//! negative `--rev` or `--limit` is an error. Spaces around a compare's parts are optional. `get`'s
//! `--consistency`, `--max-bytes` and `--print-value-only` are not accepted (etcdctl ignores the
//! last inside a transaction).

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStringExt;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, ValueEnum};
use keel_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request;
use pb::response_op::Response;
use serde_json::{Value, json};

use super::kv::{header_json, kv_json, omit_empty, parse_lease_id, prefix_end, print_json, print_kv};
use super::output::WriteOut;
use super::{Client, Global, status_error};

/// etcdctl's interactive prompts, one before each section.
const PROMPTS: [&str; 3] = ["compares:", "success requests (get, put, del):", "failure requests (get, put, del):"];

/// `txn`.
#[derive(Debug, Args)]
#[command(after_help = "Reads from standard input, as etcdctl's txn does: compares, then success requests, \
then failure requests, each section ended by an empty line.\n\
Compares: TARGET(\"KEY\") OP \"VALUE\", TARGET one of version (ver), create (c), mod (m), value (val), \
lease (hex); OP one of = != < >.\n\
Requests: get, put and del command lines with their flags.\n\n\
Example:\n  printf 'mod(\"k\") > \"0\"\\n\\nput k v2\\n\\nput k v1\\n\\n' | keel ctl txn")]
pub struct Txn {
    /// Print etcdctl's prompt before each section ("compares:", "success requests (get, put, del):",
    /// "failure requests (get, put, del):").
    #[arg(short, long)]
    interactive: bool,
}

/// Runs `txn`: reads and parses standard input, commits the transaction, prints the outcome.
pub async fn run(global: &Global, cmd: Txn) -> Result<()> {
    // Blocking reads are fine here: nothing else runs on the runtime yet, and the input is parsed
    // completely before connecting so that bad input sends nothing.
    let request = read_txn(std::io::stdin().lock(), |prompt| {
        if cmd.interactive {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{prompt}").and_then(|()| out.flush()).context("writing the prompt")?;
        }
        Ok(())
    })?;
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let resp =
        pb::kv_client::KvClient::new(channel).txn(client.request(request)).await.map_err(status_error)?.into_inner();
    if global.write_out == WriteOut::Json {
        print_json(&txn_json(&resp));
    } else {
        // etcdctl has no table for txn: `-w table` prints the simple format.
        print_simple(&resp);
    }
    Ok(())
}

/// Reads the three sections from `input` and parses them into one request; `prompt` is called
/// before each section (it prints etcdctl's prompts with `-i`). Each line is parsed as soon as it
/// is read, so an interactive user learns of a mistake at once, as with etcdctl.
fn read_txn(input: impl BufRead, mut prompt: impl FnMut(&str) -> Result<()>) -> Result<pb::TxnRequest> {
    let mut lines = Lines { input, number: 0, ended: false };
    prompt(PROMPTS[0])?;
    let compare = lines.section("compare", parse_compare)?;
    prompt(PROMPTS[1])?;
    let success = lines.section("request", parse_request)?;
    prompt(PROMPTS[2])?;
    let failure = lines.section("request", parse_request)?;
    Ok(pb::TxnRequest { compare, success, failure })
}

/// The input's lines, numbered from 1, read one section at a time.
struct Lines<R> {
    input: R,
    /// The number of the last line read.
    number: usize,
    /// The input has ended; every later section is empty.
    ended: bool,
}

impl<R: BufRead> Lines<R> {
    /// The next section's lines, each parsed by `parse`, up to an empty line or the end of the
    /// input. Lines are trimmed first, as etcdctl's `TrimSpace` does; an error names the line's
    /// number and text and what it was meant to be (`what`).
    fn section<T>(&mut self, what: &str, parse: impl Fn(&[u8]) -> Result<T, String>) -> Result<Vec<T>> {
        let mut section = Vec::new();
        while !self.ended {
            let mut line = Vec::new();
            if self.input.read_until(b'\n', &mut line).context("reading standard input")? == 0 {
                self.ended = true;
                break;
            }
            self.number += 1;
            let line = line.trim_ascii();
            if line.is_empty() {
                break;
            }
            let parsed =
                parse(line).map_err(|why| anyhow!("line {}: bad {what} \"{}\": {why}", self.number, lossy(line)))?;
            section.push(parsed);
        }
        Ok(section)
    }
}

/// Parses `TARGET("KEY") OP "VALUE"` as etcdctl's `ParseCompare` does; the error says what is wrong
/// (the caller adds the line).
fn parse_compare(line: &[u8]) -> Result<pb::Compare, String> {
    let Some(open) = line.iter().position(|&b| b == b'(') else {
        return Err("expected TARGET(\"KEY\") OP \"VALUE\", e.g. value(\"k\") = \"v\"".into());
    };
    let name = lossy(line[..open].trim_ascii());
    let target = match name.as_str() {
        "ver" | "version" => CompareTarget::Version,
        "c" | "create" => CompareTarget::Create,
        "m" | "mod" => CompareTarget::Mod,
        "val" | "value" => CompareTarget::Value,
        "lease" => CompareTarget::Lease,
        _ => return Err(format!("unknown target {name} (expected version, create, mod, value or lease)")),
    };
    let mut rest = Cursor { rest: &line[open + 1..] };
    rest.skip_spaces();
    let key = rest.go_quoted().map_err(|why| format!("the key: {why}"))?;
    rest.skip_spaces();
    if !rest.eat(b')') {
        return Err("expected ) after the key".into());
    }
    rest.skip_spaces();
    let op = rest.take_while(|b| matches!(b, b'=' | b'!' | b'<' | b'>'));
    let result = match op {
        b"=" => CompareResult::Equal,
        b"!=" => CompareResult::NotEqual,
        b"<" => CompareResult::Less,
        b">" => CompareResult::Greater,
        b"" => return Err("expected an operator (=, !=, < or >) after the key".into()),
        other => return Err(format!("unknown operator {} (expected =, !=, < or >)", lossy(other))),
    };
    rest.skip_spaces();
    let value = rest.go_quoted().map_err(|why| format!("the value: {why}"))?;
    rest.skip_spaces();
    if !rest.rest.is_empty() {
        return Err(format!("unexpected text after the value: {}", lossy(rest.rest)));
    }
    // Revisions and versions are decimal, lease ids hex, as in etcdctl.
    let number = || {
        std::str::from_utf8(&value)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| format!("{name} needs a decimal number, got \"{}\"", lossy(&value)))
    };
    let target_union = match target {
        CompareTarget::Version => TargetUnion::Version(number()?),
        CompareTarget::Create => TargetUnion::CreateRevision(number()?),
        CompareTarget::Mod => TargetUnion::ModRevision(number()?),
        CompareTarget::Lease => TargetUnion::Lease(parse_lease_id(&lossy(&value))?),
        CompareTarget::Value => TargetUnion::Value(value),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(target_union),
    })
}

/// Parses one request line (`get ...`, `put ...`, `del ...`) with etcdctl's flags.
fn parse_request(line: &[u8]) -> Result<pb::RequestOp, String> {
    let words = words(line)?;
    let Some(name) = words.first().cloned() else {
        return Err("expected get, put or del".into());
    };
    // Clap takes the first word as the command's name; the others are its arguments. OsString
    // keeps keys and values as bytes.
    let args = words.into_iter().map(OsString::from_vec);
    let request = match name.as_slice() {
        b"get" => Request::RequestRange(GetOp::try_parse_from(args).map_err(clap_reason)?.request()?),
        b"put" => Request::RequestPut(PutOp::try_parse_from(args).map_err(clap_reason)?.request()?),
        b"del" => Request::RequestDeleteRange(DelOp::try_parse_from(args).map_err(clap_reason)?.request()?),
        other => return Err(format!("unknown request {} (expected get, put or del)", lossy(other))),
    };
    Ok(pb::RequestOp { request: Some(request) })
}

/// A clap error as one line: its first paragraph (clap goes on with usage and tips), white space
/// collapsed.
fn clap_reason(error: clap::Error) -> String {
    let text = error.to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A `get` request line.
#[derive(Debug, Parser)]
#[command(name = "get", disable_help_flag = true)]
struct GetOp {
    /// The key (with --prefix, the prefix; with --from-key, the first key).
    key: OsString,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<OsString>,
    /// Get every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Get every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
    /// Read at this revision (0: the transaction's).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    rev: i64,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    limit: i64,
    /// Return keys without values.
    #[arg(long)]
    keys_only: bool,
    /// Return only the count.
    #[arg(long)]
    count_only: bool,
    /// Order of the results (case does not matter).
    #[arg(long, value_enum, ignore_case = true)]
    order: Option<Order>,
    /// What to sort by (case does not matter).
    #[arg(long, value_enum, ignore_case = true)]
    sort_by: Option<SortBy>,
}

/// `--order`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Order {
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// `--sort-by`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum SortBy {
    /// Creation revision.
    Create,
    /// Key.
    Key,
    /// Modification revision.
    Modify,
    /// Value.
    Value,
    /// Version.
    Version,
}

impl GetOp {
    /// The range request etcdctl's `getGetOp` builds.
    fn request(self) -> Result<pb::RangeRequest, String> {
        if self.keys_only && self.count_only {
            return Err("`--keys-only` and `--count-only` cannot be set at the same time, choose one".into());
        }
        let (key, range_end) = key_range(self.key, self.range_end, self.prefix, self.from_key)?;
        let target = match self.sort_by {
            None | Some(SortBy::Key) => SortTarget::Key,
            Some(SortBy::Create) => SortTarget::Create,
            Some(SortBy::Modify) => SortTarget::Mod,
            Some(SortBy::Value) => SortTarget::Value,
            Some(SortBy::Version) => SortTarget::Version,
        };
        let order = match self.order {
            None => SortOrder::None,
            // Keys already come in ascending order; clientv3's WithSort drops this order so the
            // server need not collect the whole range before applying the limit.
            Some(Order::Ascend) if target == SortTarget::Key => SortOrder::None,
            Some(Order::Ascend) => SortOrder::Ascend,
            Some(Order::Descend) => SortOrder::Descend,
        };
        Ok(pb::RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.rev,
            sort_order: order as i32,
            sort_target: target as i32,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        })
    }
}

/// A `put` request line.
#[derive(Debug, Parser)]
#[command(name = "put", disable_help_flag = true)]
struct PutOp {
    /// The key.
    key: OsString,
    /// The value (required unless --ignore-value).
    value: Option<OsString>,
    /// Attach the key to this lease (hex id).
    #[arg(long, value_parser = parse_lease_id, default_value = "0")]
    lease: i64,
    /// Return the previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Keep the current value (only the lease changes).
    #[arg(long)]
    ignore_value: bool,
    /// Keep the current lease (only the value changes).
    #[arg(long)]
    ignore_lease: bool,
}

impl PutOp {
    /// The put request etcdctl's `getPutOp` builds.
    fn request(self) -> Result<pb::PutRequest, String> {
        let key = self.key.into_vec();
        if key.is_empty() {
            return Err("the key must not be empty".into());
        }
        let value = match (self.value, self.ignore_value) {
            (Some(value), false) => value.into_vec(),
            (None, true) => Vec::new(),
            (None, false) => return Err("put needs a key and a value".into()),
            (Some(_), true) => return Err("put needs only a key when --ignore-value is set".into()),
        };
        Ok(pb::PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

/// A `del` request line.
#[derive(Debug, Parser)]
#[command(name = "del", disable_help_flag = true)]
struct DelOp {
    /// The key (with --prefix, the prefix; with --from-key, the first key).
    key: OsString,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<OsString>,
    /// Delete every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Delete every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
    /// Return the deleted key-values.
    #[arg(long)]
    prev_kv: bool,
}

impl DelOp {
    /// The delete request etcdctl's `getDelOp` builds.
    fn request(self) -> Result<pb::DeleteRangeRequest, String> {
        let (key, range_end) = key_range(self.key, self.range_end, self.prefix, self.from_key)?;
        Ok(pb::DeleteRangeRequest { key, range_end, prev_kv: self.prev_kv })
    }
}

/// `(key, range_end)` for KEY, RANGE_END, `--prefix` and `--from-key`, as etcdctl computes them (an
/// empty prefix or from-key means every key). Like `kv::key_range`, but on bytes.
fn key_range(
    key: OsString,
    range_end: Option<OsString>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    if prefix && from_key {
        return Err("`--prefix` and `--from-key` cannot be set at the same time, choose one".into());
    }
    if range_end.is_some() && (prefix || from_key) {
        return Err("too many arguments, only accept one argument when `--prefix` or `--from-key` is set".into());
    }
    let key = key.into_vec();
    if prefix {
        return Ok(if key.is_empty() {
            (vec![0], vec![0])
        } else {
            let end = prefix_end(&key);
            (key, end)
        });
    }
    if from_key {
        return Ok((if key.is_empty() { vec![0] } else { key }, vec![0]));
    }
    if key.is_empty() {
        // The server would refuse it ("key is not provided"); refusing here sends nothing.
        return Err("the key must not be empty".into());
    }
    Ok((key, range_end.map(OsStringExt::into_vec).unwrap_or_default()))
}

/// Splits a request line into words as etcdctl's `Argify` does: a word starting with `"` is a Go
/// string literal, one starting with `'` runs to the next `'` (no escapes), any other word runs to
/// the next white space (quotes inside it are literal).
fn words(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut cursor = Cursor { rest: line };
    let mut words = Vec::new();
    loop {
        cursor.skip_spaces();
        let word = match cursor.rest.first() {
            None => return Ok(words),
            Some(b'"') => cursor.go_quoted()?,
            Some(b'\'') => {
                let Some(close) = cursor.rest[1..].iter().position(|&b| b == b'\'') else {
                    return Err("missing closing ' quote".into());
                };
                let word = cursor.rest[1..=close].to_vec();
                cursor.rest = &cursor.rest[close + 2..];
                word
            }
            Some(_) => cursor.take_while(|b| !b.is_ascii_whitespace()).to_vec(),
        };
        // etcdctl would silently split `"a"b` into two words; that is almost surely a typo.
        if cursor.rest.first().is_some_and(|b| !b.is_ascii_whitespace()) {
            return Err(format!("unexpected text right after a closing quote: {}", lossy(cursor.rest)));
        }
        words.push(word);
    }
}

/// A position in one line of input.
struct Cursor<'a> {
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn skip_spaces(&mut self) {
        self.take_while(|b| b.is_ascii_whitespace());
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.rest.first() == Some(&byte);
        if next {
            self.rest = &self.rest[1..];
        }
        next
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let end = self.rest.iter().position(|&b| !keep(b)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    /// Reads a Go string literal, as `fmt`'s `%q` scans it: `"..."` with Go's escapes (`\a \b \f
    /// \n \r \t \v \\ \"`, `\xNN`, octal `\NNN`, `\uNNNN`, `\UNNNNNNNN`) or `` `raw` `` (carriage
    /// returns dropped, as Go drops them).
    fn go_quoted(&mut self) -> Result<Vec<u8>, String> {
        match self.rest.first() {
            Some(b'`') => {
                let Some(close) = self.rest[1..].iter().position(|&b| b == b'`') else {
                    return Err("missing closing ` quote".into());
                };
                let raw = self.rest[1..=close].iter().copied().filter(|&b| b != b'\r').collect();
                self.rest = &self.rest[close + 2..];
                Ok(raw)
            }
            Some(b'"') => {
                self.rest = &self.rest[1..];
                let mut out = Vec::new();
                loop {
                    let Some((&byte, rest)) = self.rest.split_first() else {
                        return Err("missing closing \" quote".into());
                    };
                    self.rest = rest;
                    match byte {
                        b'"' => return Ok(out),
                        b'\\' => self.escape(&mut out)?,
                        _ => out.push(byte),
                    }
                }
            }
            _ => Err(format!("expected a quoted string (\"...\"), got {}", lossy(self.rest))),
        }
    }

    /// Decodes one escape (after its backslash) into `out`.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let Some((&kind, rest)) = self.rest.split_first() else {
            return Err("missing closing \" quote".into());
        };
        self.rest = rest;
        let simple = match kind {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            return Ok(());
        }
        let (digits, radix) = match kind {
            b'x' => (2, 16),
            b'u' => (4, 16),
            b'U' => (8, 16),
            b'0'..=b'7' => (3, 8),
            _ => return Err(format!("unknown escape \\{}", lossy(&[kind]))),
        };
        // An octal escape's first digit is the kind byte itself.
        let (text, rest) = if radix == 8 {
            let (more, rest) = self.rest.split_at(self.rest.len().min(2));
            ([&[kind][..], more].concat(), rest)
        } else {
            let (text, rest) = self.rest.split_at(self.rest.len().min(digits));
            (text.to_vec(), rest)
        };
        // The escape as written, for messages.
        let shown =
            if radix == 8 { format!("\\{}", lossy(&text)) } else { format!("\\{}{}", char::from(kind), lossy(&text)) };
        let value = std::str::from_utf8(&text)
            .ok()
            // Digits only: from_str_radix would also take a sign.
            .filter(|t| t.len() == digits && t.chars().all(|c| c.is_digit(radix)))
            .and_then(|t| u32::from_str_radix(t, radix).ok())
            .ok_or_else(|| format!("bad escape {shown}"))?;
        self.rest = rest;
        match kind {
            // \x and octal escapes are single bytes (octal up to \377).
            b'x' | b'0'..=b'7' => out.push(u8::try_from(value).map_err(|_| format!("bad escape {shown}"))?),
            _ => {
                let c = char::from_u32(value).ok_or_else(|| format!("escape {shown} is not a character"))?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        Ok(())
    }
}

/// Bytes for messages.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Prints the response as etcdctl's simple printer: SUCCESS or FAILURE, then an empty line and
/// each response as `get`, `put` or `del` prints it.
fn print_simple(resp: &pb::TxnResponse) {
    println!("{}", if resp.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in &resp.responses {
        println!();
        match &op.response {
            Some(Response::ResponseRange(range)) => {
                for kv in &range.kvs {
                    print_kv(kv, false);
                }
            }
            Some(Response::ResponsePut(put)) => {
                println!("OK");
                if let Some(prev) = &put.prev_kv {
                    print_kv(prev, false);
                }
            }
            Some(Response::ResponseDeleteRange(del)) => {
                println!("{}", del.deleted);
                for kv in &del.prev_kvs {
                    print_kv(kv, false);
                }
            }
            // Never asked for (the input cannot nest transactions), but printable all the same.
            Some(Response::ResponseTxn(txn)) => print_simple(txn),
            None => println!("unexpected empty response"),
        }
    }
}

/// The response as etcdctl's JSON printer writes it: Go's `encoding/json` on `pb.TxnResponse`, so
/// fields are `omitempty` and each response sits under `Response` (the oneof's Go field, which has
/// no JSON name) and then its oneof field's name (`response_range`, `response_put`, ...).
fn txn_json(resp: &pb::TxnResponse) -> Value {
    let responses: Vec<Value> = resp.responses.iter().map(response_op_json).collect();
    omit_empty(json!({
        "header": header(resp.header.as_ref()),
        "succeeded": resp.succeeded,
        "responses": responses,
    }))
}

/// One `ResponseOp` as Go's `encoding/json` writes it.
fn response_op_json(op: &pb::ResponseOp) -> Value {
    let inner = match &op.response {
        None => Value::Null,
        Some(Response::ResponseRange(range)) => {
            let kvs: Vec<Value> = range.kvs.iter().map(kv_json).collect();
            json!({ "response_range": omit_empty(json!({
                "header": header(range.header.as_ref()),
                "kvs": kvs,
                "more": range.more,
                "count": range.count,
            })) })
        }
        Some(Response::ResponsePut(put)) => json!({ "response_put": omit_empty(json!({
            "header": header(put.header.as_ref()),
            "prev_kv": put.prev_kv.as_ref().map(kv_json),
        })) }),
        Some(Response::ResponseDeleteRange(del)) => {
            let prev: Vec<Value> = del.prev_kvs.iter().map(kv_json).collect();
            json!({ "response_delete_range": omit_empty(json!({
                "header": header(del.header.as_ref()),
                "deleted": del.deleted,
                "prev_kvs": prev,
            })) })
        }
        Some(Response::ResponseTxn(txn)) => json!({ "response_txn": txn_json(txn) }),
    };
    json!({ "Response": inner })
}

/// A header, or null (omitted by `omit_empty`) when absent, as Go omits a nil pointer.
fn header(header: Option<&pb::ResponseHeader>) -> Value {
    header.map_or(Value::Null, |h| header_json(Some(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(line: &str) -> pb::Compare {
        parse_compare(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn compare_error(line: &str) -> String {
        match parse_compare(line.as_bytes()) {
            Ok(c) => panic!("{line} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    fn request(line: &str) -> Request {
        parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}")).request.expect("a request")
    }

    fn request_error(line: &str) -> String {
        match parse_request(line.as_bytes()) {
            Ok(r) => panic!("{line} parsed as {r:?}"),
            Err(e) => e,
        }
    }

    /// An input that fails when read: reading past what a test expects to be read is an error.
    struct Failing;

    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read too far"))
        }
    }

    impl BufRead for Failing {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            Err(std::io::Error::other("read too far"))
        }

        fn consume(&mut self, _: usize) {}
    }

    /// Parses `input` as standard input, collecting the prompts.
    fn read(input: &str) -> (Result<pb::TxnRequest>, Vec<String>) {
        let mut prompts = Vec::new();
        let result = read_txn(input.as_bytes(), |p| {
            prompts.push(p.to_string());
            Ok(())
        });
        (result, prompts)
    }

    #[test]
    fn compares_cover_every_target_and_operator_like_etcdctl() {
        let c = compare(r#"value("key") = "v""#);
        assert_eq!((c.target, c.result), (CompareTarget::Value as i32, CompareResult::Equal as i32));
        assert_eq!((c.key, c.target_union), (b"key".to_vec(), Some(TargetUnion::Value(b"v".to_vec()))));
        let c = compare(r#"mod("key") > "5""#);
        assert_eq!((c.target, c.result), (CompareTarget::Mod as i32, CompareResult::Greater as i32));
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));
        let c = compare(r#"create("key") < "3""#);
        assert_eq!((c.target, c.result), (CompareTarget::Create as i32, CompareResult::Less as i32));
        assert_eq!(c.target_union, Some(TargetUnion::CreateRevision(3)));
        let c = compare(r#"version("key") != "0""#);
        assert_eq!((c.target, c.result), (CompareTarget::Version as i32, CompareResult::NotEqual as i32));
        assert_eq!(c.target_union, Some(TargetUnion::Version(0)));
        let c = compare(r#"lease("key") = "694d77aa9e38260f""#);
        assert_eq!(c.target, CompareTarget::Lease as i32);
        assert_eq!(c.target_union, Some(TargetUnion::Lease(0x694d_77aa_9e38_260f)), "lease ids are hex");
        assert!(c.range_end.is_empty());
    }

    #[test]
    fn short_target_names_mean_the_same_as_long_ones() {
        for (short, long) in [("c", "create"), ("m", "mod"), ("val", "value"), ("ver", "version")] {
            assert_eq!(compare(&format!(r#"{short}("k") = "1""#)), compare(&format!(r#"{long}("k") = "1""#)));
        }
    }

    #[test]
    fn spacing_around_compare_tokens_is_flexible() {
        let tight = compare(r#"value("k")="v""#);
        assert_eq!(tight, compare(r#"value ( "k" )   =   "v""#));
        assert_eq!(tight, compare(r#"value("k") = "v""#));
    }

    #[test]
    fn quoted_strings_decode_go_escapes() {
        let c = compare(r#"value("a\"b\\c") = "x\ny\tz\x41\101\u00e9\U0001F600""#);
        assert_eq!(c.key, b"a\"b\\c");
        assert_eq!(c.target_union, Some(TargetUnion::Value("x\ny\tzAAé😀".as_bytes().to_vec())));
        let c = compare(r#"value("\xff\x00") = "\a\b\f\r\v""#);
        assert_eq!(c.key, vec![0xff, 0x00], "\\xNN is a byte, not a character");
        assert_eq!(c.target_union, Some(TargetUnion::Value(vec![7, 8, 12, 13, 11])));
        let c = compare(r"value(`raw\n`) = `with spaces`");
        assert_eq!(c.key, br"raw\n", "backquoted strings are raw");
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"with spaces".to_vec())));
    }

    #[test]
    fn bad_compares_say_what_is_wrong() {
        for (line, expected) in [
            (r#"valu("a") = "1""#, "unknown target valu"),
            (r#"value "a" = "1""#, "expected TARGET(\"KEY\") OP \"VALUE\""),
            (r#"value(a) = "1""#, "the key: expected a quoted string"),
            (r#"value('a') = "1""#, "the key: expected a quoted string"),
            (r#"value("a) = "1""#, "expected ) after the key"),
            (r#"value("a" = "1""#, "expected ) after the key"),
            (r#"value("a") "1""#, "expected an operator"),
            (r#"value("a") == "1""#, "unknown operator =="),
            (r#"value("a") =< "1""#, "unknown operator =<"),
            (r#"value("a") = 1"#, "the value: expected a quoted string"),
            (r#"value("a") ="#, "the value: expected a quoted string"),
            (r#"value("a") = "1"#, "the value: missing closing \" quote"),
            (r#"value("a") = "1" extra"#, "unexpected text after the value: extra"),
            (r#"version("a") = "x""#, "version needs a decimal number, got \"x\""),
            (r#"mod("a") = "0x10""#, "mod needs a decimal number"),
            (r#"c("a") = "1.5""#, "c needs a decimal number"),
            (r#"lease("a") = "xyz""#, "bad lease ID \"xyz\""),
            (r#"value("\q") = "1""#, "unknown escape \\q"),
            (r#"value("\x4") = "1""#, "bad escape \\x4\""),
            (r#"value("\400") = "1""#, "bad escape \\400"),
            (r#"value("\uD800") = "1""#, "escape \\uD800 is not a character"),
        ] {
            let error = compare_error(line);
            assert!(error.contains(expected), "{line}: {error:?} should contain {expected:?}");
        }
    }

    #[test]
    fn request_words_split_like_etcdctl_argify() {
        assert_eq!(words(b"put  k\t v").unwrap(), [b"put".to_vec(), b"k".to_vec(), b"v".to_vec()]);
        assert_eq!(
            words(br#"put "two words" 'it''s'"#).unwrap_err(),
            "unexpected text right after a closing quote: 's'"
        );
        assert_eq!(
            words(br#"put "a \"b\"\x41" 'raw \n' a"b"#).unwrap(),
            [b"put".to_vec(), b"a \"b\"A".to_vec(), br"raw \n".to_vec(), b"a\"b".to_vec()],
            "Go escapes in double quotes, none in single quotes, quotes inside a bare word are literal"
        );
        assert_eq!(words(br#"put "" x"#).unwrap(), [b"put".to_vec(), vec![], b"x".to_vec()]);
        assert!(words(br#"put "open"#).unwrap_err().contains("missing closing \" quote"));
        assert!(words(b"put 'open").unwrap_err().contains("missing closing ' quote"));
    }

    #[test]
    fn put_lines_become_put_requests_with_etcdctl_flags() {
        let Request::RequestPut(put) = request(r#"put k "a value" --lease=694d77aa9e38260f --prev-kv"#) else {
            panic!("not a put")
        };
        assert_eq!(put.key, b"k");
        assert_eq!(put.value, b"a value");
        assert_eq!(put.lease, 0x694d_77aa_9e38_260f);
        assert!(put.prev_kv && !put.ignore_value && !put.ignore_lease);
        let Request::RequestPut(put) = request("put --lease 1f k v") else { panic!("not a put") };
        assert_eq!((put.key.as_slice(), put.value.as_slice(), put.lease), (&b"k"[..], &b"v"[..], 0x1f));
        let Request::RequestPut(put) = request("put k --ignore-value --ignore-lease") else { panic!("not a put") };
        assert!(put.value.is_empty() && put.ignore_value && put.ignore_lease);
        let Request::RequestPut(put) = request(r#"put "\xff" v"#) else { panic!("not a put") };
        assert_eq!(put.key, [0xff], "keys are bytes");
    }

    #[test]
    fn get_lines_become_range_requests_with_etcdctl_flags() {
        let Request::RequestRange(get) = request("get k") else { panic!("not a get") };
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"k"[..], &b""[..]));
        let Request::RequestRange(get) = request("get a c --rev=7 --limit 2 --keys-only") else { panic!("not a get") };
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"a"[..], &b"c"[..]));
        assert_eq!((get.revision, get.limit, get.keys_only, get.count_only), (7, 2, true, false));
        let Request::RequestRange(get) = request("get --prefix foo --count-only") else { panic!("not a get") };
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"foo"[..], &b"fop"[..]));
        assert!(get.count_only);
        let Request::RequestRange(get) = request("get --prefix ''") else { panic!("not a get") };
        assert_eq!((get.key, get.range_end), (vec![0], vec![0]), "an empty prefix is every key");
        let Request::RequestRange(get) = request("get --from-key b") else { panic!("not a get") };
        assert_eq!((get.key, get.range_end), (b"b".to_vec(), vec![0]));
        let Request::RequestRange(get) = request("get k --sort-by=MODIFY --order=descend") else { panic!("not a get") };
        assert_eq!((get.sort_target, get.sort_order), (SortTarget::Mod as i32, SortOrder::Descend as i32));
        let Request::RequestRange(get) = request("get k --sort-by key --order ASCEND") else { panic!("not a get") };
        assert_eq!(get.sort_order, SortOrder::None as i32, "ascending by key is the natural order, as in clientv3");
    }

    #[test]
    fn del_lines_become_delete_requests_with_etcdctl_flags() {
        let Request::RequestDeleteRange(del) = request("del k") else { panic!("not a del") };
        assert_eq!((del.key.as_slice(), del.range_end.as_slice(), del.prev_kv), (&b"k"[..], &b""[..], false));
        let Request::RequestDeleteRange(del) = request("del --prefix --prev-kv a/") else { panic!("not a del") };
        assert_eq!((del.key.as_slice(), del.range_end.as_slice(), del.prev_kv), (&b"a/"[..], &b"a0"[..], true));
        let Request::RequestDeleteRange(del) = request("del a z") else { panic!("not a del") };
        assert_eq!(del.range_end, b"z");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (line, expected) in [
            ("frob k", "unknown request frob (expected get, put or del)"),
            ("delete k", "unknown request delete"),
            ("put k", "put needs a key and a value"),
            ("put k v --ignore-value", "only a key when --ignore-value"),
            ("put '' v", "the key must not be empty"),
            ("get ''", "the key must not be empty"),
            ("put k v --lease=xyz", "bad lease ID \"xyz\""),
            ("put k v --frob", "unexpected argument '--frob'"),
            ("put k v extra", "unexpected argument 'extra'"),
            ("get", "required arguments were not provided: <KEY>"),
            ("get k --rev=-1", "--rev"),
            ("get k --rev=x", "invalid value 'x'"),
            ("get k --order=sideways", "invalid value 'sideways'"),
            ("get k --keys-only --count-only", "cannot be set at the same time"),
            ("get --prefix a b", "only accept one argument when `--prefix`"),
            ("del --prefix --from-key a", "cannot be set at the same time"),
            ("del k --help", "unexpected argument '--help'"),
            ("get \"open", "missing closing \" quote"),
        ] {
            let error = request_error(line);
            assert!(error.contains(expected), "{line}: {error:?} should contain {expected:?}");
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
    }

    #[test]
    fn sections_end_at_empty_lines_and_at_the_end_of_input() {
        let input = "  value(\"k\") = \"v\"  \r\nmod(\"k\") > \"1\"\n   \nput k v2\nget k\n\ndel k\n\n";
        let (txn, prompts) = read(input);
        let txn = txn.expect("parses");
        assert_eq!((txn.compare.len(), txn.success.len(), txn.failure.len()), (2, 2, 1));
        assert_eq!(prompts, PROMPTS, "one prompt before each section");

        // Without the final empty lines the input simply ends (etcdctl would fail with EOF).
        let (txn, _) = read("value(\"k\") = \"v\"\n\nput k v2");
        let txn = txn.expect("parses");
        assert_eq!((txn.compare.len(), txn.success.len(), txn.failure.len()), (1, 1, 0));

        // No compares: the success branch always runs.
        let (txn, _) = read("\nput k v\n\n\n");
        let txn = txn.expect("parses");
        assert_eq!((txn.compare.len(), txn.success.len(), txn.failure.len()), (0, 1, 0));
        let (txn, _) = read("");
        assert_eq!(txn.expect("parses"), pb::TxnRequest::default());
    }

    #[test]
    fn errors_name_the_line_number_and_text_and_stop_before_later_prompts() {
        let (txn, prompts) = read("valu(\"a\") = \"1\"\n\nput k v\n\n");
        let error = txn.expect_err("a bad target").to_string();
        assert_eq!(
            error,
            "line 1: bad compare \"valu(\"a\") = \"1\"\": unknown target valu (expected version, create, mod, value or lease)"
        );
        assert_eq!(prompts, ["compares:"], "a bad section is reported before the next prompt");

        let (txn, prompts) = read("value(\"a\") = \"1\"\n\nput k v\n\nget k\nfrob x\n");
        let error = txn.expect_err("a bad request").to_string();
        assert_eq!(error, "line 6: bad request \"frob x\": unknown request frob (expected get, put or del)");
        assert_eq!(prompts, PROMPTS);

        // A bad line is reported as soon as it is read, before the rest of its section.
        let input = std::io::Read::chain("\nput k v\nfrob x\n".as_bytes(), Failing);
        let error = read_txn(input, |_| Ok(())).expect_err("a bad request").to_string();
        assert!(error.starts_with("line 3: bad request \"frob x\""), "{error}");
    }

    #[test]
    fn json_output_matches_go_encoding_of_txn_response() {
        let header = |revision| Some(pb::ResponseHeader { revision, ..Default::default() });
        let kv = keel_proto::mvccpb::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        };
        let resp = pb::TxnResponse {
            header: Some(pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 4, raft_term: 3 }),
            succeeded: true,
            responses: vec![
                pb::ResponseOp {
                    response: Some(Response::ResponsePut(pb::PutResponse { header: header(4), prev_kv: None })),
                },
                pb::ResponseOp {
                    response: Some(Response::ResponseRange(pb::RangeResponse {
                        header: header(4),
                        kvs: vec![kv.clone()],
                        more: false,
                        count: 1,
                    })),
                },
                pb::ResponseOp {
                    response: Some(Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: None,
                        deleted: 1,
                        prev_kvs: vec![kv],
                    })),
                },
            ],
        };
        let kv_text = r#"{"key":"aw==","create_revision":2,"mod_revision":3,"version":2,"value":"dg=="}"#;
        assert_eq!(
            txn_json(&resp).to_string(),
            format!(
                concat!(
                    r#"{{"header":{{"cluster_id":1,"member_id":2,"revision":4,"raft_term":3}},"succeeded":true,"responses":["#,
                    r#"{{"Response":{{"response_put":{{"header":{{"revision":4}}}}}}}},"#,
                    r#"{{"Response":{{"response_range":{{"header":{{"revision":4}},"kvs":[{kv}],"count":1}}}}}},"#,
                    r#"{{"Response":{{"response_delete_range":{{"deleted":1,"prev_kvs":[{kv}]}}}}}}]}}"#
                ),
                kv = kv_text
            )
        );
        let failed = pb::TxnResponse { header: header(9), succeeded: false, responses: vec![] };
        assert_eq!(txn_json(&failed).to_string(), r#"{"header":{"revision":9}}"#, "false and empty lists are omitted");
    }
}
