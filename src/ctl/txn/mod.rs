//! `keel ctl txn`: etcdctl 3.4/3.5's `txn`, for scripts and operators who already write its input.
//! This module holds the command's arguments, reads standard input section by section, sends the
//! one request and prints the outcome (simple or JSON); `parse.rs` turns each line into a compare
//! or a request.
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
//! A compare is `TARGET("KEY") OP "VALUE"`, a request an etcdctl `get`, `put` or `del` command
//! line; `parse.rs` states their exact syntax.
//!
//! Output is etcdctl's: `SUCCESS` or `FAILURE`, then for each response an empty line and what
//! `get`, `put` or `del` would print; `-w json` is the `TxnResponse` as Go's `encoding/json` writes
//! it (etcdctl's JSON printer). FAILURE is not an error: the exit code is 0 either way.
//!
//! Invariants: the whole input is read and parsed before any connection is made, so bad input sends
//! nothing; every parse error names the line's number and text and what is wrong; the one request
//! carries the command timeout. Keys and values are bytes (`\xNN` may make them non-UTF-8).
//!
//! Deliberate difference from etcdctl, on input etcdctl rejects: the end of the input ends a
//! section (etcdctl fails with `EOF` unless every section has its empty line). The differences in
//! parsing lines are listed in `parse.rs`.

mod parse;

use std::io::{BufRead, Write};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use keel_proto::etcdserverpb as pb;
use pb::response_op::Response;
use serde_json::{Value, json};

use self::parse::{lossy, parse_compare, parse_request};
use super::kv::{header_json, kv_json, omit_empty, print_json, print_kv};
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
