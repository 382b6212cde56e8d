//! The tokenizer against the token ids sentence-transformers produced.

mod common;

use lanes_nn::{Tokenizer, TOKENIZER_FILE};

#[test]
fn token_ids_match_fixture_for_every_text() {
    let Some(model) = common::model() else { return };
    for (i, fx) in common::fixtures().iter().enumerate() {
        let (ids, types) = model.tokenizer.encode(&fx.text).expect("encodes");
        assert_eq!(ids, fx.input_ids, "fixture #{i} {:?}", fx.text);
        assert_eq!(ids.len(), fx.n_tokens, "fixture #{i}");
        assert!(
            types.iter().all(|&t| t == 0),
            "fixture #{i}: single segment"
        );
    }
}

#[test]
fn empty_text_is_cls_sep_and_long_text_is_truncated_to_256() {
    let Some(model) = common::model() else { return };
    let (ids, _) = model.tokenizer.encode("").expect("encodes");
    assert_eq!(ids, vec![101, 102]);
    let long = "word ".repeat(1000);
    let (ids, _) = model.tokenizer.encode(&long).expect("encodes");
    assert_eq!(ids.len(), 256);
    assert_eq!((ids[0], ids[255]), (101, 102));
}

#[test]
fn batch_is_packed_with_offsets_and_lengths() {
    let Some(model) = common::model() else { return };
    let fx = common::fixtures();
    let texts: Vec<&str> = fx.iter().map(|f| f.text.as_str()).collect();
    let tokens = model.tokenizer.encode_batch(&texts).expect("encodes");
    let total: usize = fx.iter().map(|f| f.n_tokens).sum();
    let longest = fx.iter().map(|f| f.n_tokens).max().unwrap_or(0);
    assert_eq!((tokens.batch(), tokens.total_tokens()), (25, total));
    assert_eq!(tokens.max_len(), longest);
    assert_eq!(tokens.ids().len(), total);
    assert_eq!(tokens.type_ids().len(), total);
    assert_eq!(tokens.offsets().len(), 26);
    let lengths: Vec<usize> = tokens.lengths().collect();
    for (row, f) in fx.iter().enumerate() {
        assert_eq!(lengths[row], f.n_tokens);
        assert_eq!(tokens.row_ids(row), Some(&f.input_ids[..]));
        assert!(tokens.row_type_ids(row).unwrap().iter().all(|&t| t == 0));
    }
    let empty = model.tokenizer.encode_batch(&[]).expect("empty batch");
    assert_eq!((empty.batch(), empty.total_tokens()), (0, 0));
}

#[test]
fn one_tokenizer_serves_many_threads() {
    let Some(model) = common::model() else { return };
    let tok = &model.tokenizer;
    let fx = common::fixtures();
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for round in 0..5 {
                    for (i, f) in fx.iter().enumerate().skip((t + round) % 3) {
                        let enc = tok.encode_batch(&[f.text.as_str(), "x"]).expect("encodes");
                        assert_eq!(enc.row_ids(0), Some(&f.input_ids[..]), "thread {t} #{i}");
                    }
                }
            });
        }
    });
}

#[test]
fn max_len_is_configurable_and_validated() {
    let Some(dir) = common::model_dir() else {
        return;
    };
    let path = dir.join(TOKENIZER_FILE);
    let tok = Tokenizer::from_file_with_max_len(&path, 8).expect("loads");
    assert_eq!(tok.max_len(), 8);
    let (ids, _) = tok
        .encode("one two three four five six seven eight nine")
        .expect("encodes");
    assert_eq!(ids, vec![101, 2028, 2048, 2093, 2176, 2274, 2416, 102]);
    let err = Tokenizer::from_file_with_max_len(&path, 2).expect_err("no room for text");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn bad_tokenizer_files_are_reported() {
    let dir = common::temp_dir("bad-tokenizer");
    let path = dir.join(TOKENIZER_FILE);
    std::fs::write(&path, "{ \"not\": \"a tokenizer\" }").expect("write");
    let err = Tokenizer::from_file(&path).expect_err("not a tokenizer");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "source chained");
    let err = Tokenizer::from_file(dir.join("absent.json")).expect_err("absent");
    assert!(err.to_string().contains("absent.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
