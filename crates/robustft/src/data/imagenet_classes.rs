//! The 1000 ImageNet-1k classes in the standard index order (the sorted WordNet ids), with the
//! class names OpenAI's CLIP uses for zero-shot ImageNet, and the 200-class subsets of
//! ImageNet-R and ImageNet-A as indices into that order — read from the data file
//! `imagenet_classes.tsv` beside this module (one line per class: WordNet id, class name, and
//! 1/0 for membership in ImageNet-R and ImageNet-A), embedded in the binary.
//!
//! Sources (data only; every list was checked against the one named here):
//!
//! * [`IMAGENET_WNIDS`]: hendrycks/imagenet-r `eval.py` (`all_wnids`), the sorted synset list
//!   that torchvision's `ImageFolder` turns into labels 0..999 (identical to timm's
//!   `data/_info/imagenet_synsets.txt`, from which the data file was generated).
//! * [`IMAGENET_CLASS_NAMES`]: OpenAI CLIP's `notebooks/Prompt_Engineering_for_ImageNet.ipynb`
//!   class names, as copied in mlfoundations/wise-ft `src/datasets/imagenet_classnames.py`
//!   (`openai_classnames`), which FLYP and DRM reuse (identical to open_clip's
//!   `zero_shot_metadata.IMAGENET_CLASSNAMES`, from which the data file was generated). Two names
//!   occur twice ("missile" at 657 and 744, "sunglasses" at 836 and 837), as in the source.
//! * [`IMAGENET_R_CLASS_INDICES`] and [`IMAGENET_A_CLASS_INDICES`]: wise-ft
//!   `src/datasets/imagenet_r.py` and `imagenet_a.py` (`CLASS_SUBLIST`); the ImageNet-R list
//!   equals the positions of hendrycks/imagenet-r's `imagenet_r_wnids` in `all_wnids`.

use std::sync::LazyLock;

/// The data file: a header line, then `wnid<TAB>name<TAB>in R<TAB>in A` per class.
const TABLE: &str = include_str!("imagenet_classes.tsv");

/// One class's line of [`TABLE`].
struct Row {
    wnid: &'static str,
    name: &'static str,
    in_r: bool,
    in_a: bool,
}

static ROWS: LazyLock<Vec<Row>> = LazyLock::new(|| {
    let rows: Vec<Row> = TABLE.lines().skip(1).map(parse_row).collect();
    assert_eq!(rows.len(), 1000, "imagenet_classes.tsv holds the 1000 ImageNet-1k classes");
    rows
});

fn parse_row(line: &'static str) -> Row {
    let fields: Vec<&str> = line.split('\t').collect();
    let [wnid, name, in_r, in_a] = fields[..] else {
        panic!("imagenet_classes.tsv: malformed line `{line}`")
    };
    Row { wnid, name, in_r: in_r == "1", in_a: in_a == "1" }
}

fn indices(member: fn(&Row) -> bool) -> Vec<usize> {
    ROWS.iter().enumerate().filter(|(_, row)| member(row)).map(|(i, _)| i).collect()
}

/// WordNet ids of the 1000 ImageNet-1k classes, sorted: position = class index.
pub static IMAGENET_WNIDS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| ROWS.iter().map(|r| r.wnid).collect());

/// OpenAI CLIP's class names, by class index.
pub static IMAGENET_CLASS_NAMES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| ROWS.iter().map(|r| r.name).collect());

/// The 200 ImageNet-R classes, as ascending ImageNet-1k indices.
pub static IMAGENET_R_CLASS_INDICES: LazyLock<Vec<usize>> = LazyLock::new(|| indices(|r| r.in_r));

/// The 200 ImageNet-A classes, as ascending ImageNet-1k indices.
pub static IMAGENET_A_CLASS_INDICES: LazyLock<Vec<usize>> = LazyLock::new(|| indices(|r| r.in_a));
