//! Static analysis of a compiled `when`: an upper bound on what it may cost to run (so no condition can loop or allocate without bound), and the names it binds.
//!
//! CEL has no loops of its own; only macros (`all`, `exists`, `map`, `filter`, ...) iterate, over
//! a list or map. The bound multiplies the work of a macro's body by the size of what it
//! iterates: a literal's length, or [`UNKNOWN_SIZE`] for a value from the facts (labels, the
//! only collection among the variables, are small). Conditions over the budget are load errors.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// The most evaluation steps a condition may take.
pub const BUDGET: u64 = 100_000;
/// The longest `when`, in bytes.
pub const MAX_LEN: usize = 4096;
/// Assumed size of a collection that is not a literal.
const UNKNOWN_SIZE: u64 = 64;

/// (steps, size of the value when it is a collection built by the expression itself; None for a
/// value from the facts, whose size is unknown).
fn walk(e: &IdedExpr) -> (u64, Option<u64>) {
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) => (1, None),
        Expr::Literal(_) => (1, Some(1)),
        Expr::Select(s) => {
            let (c, _) = walk(&s.operand);
            (c.saturating_add(1), None)
        }
        Expr::Call(call) => {
            let mut steps: u64 = 1;
            let mut size: u64 = 0;
            if let Some(t) = &call.target {
                let (c, s) = walk(t);
                steps = steps.saturating_add(c);
                size = size.saturating_add(s.unwrap_or(1));
            }
            for a in &call.args {
                let (c, s) = walk(a);
                steps = steps.saturating_add(c);
                size = size.saturating_add(s.unwrap_or(1));
            }
            if call.func_name == "_+_" {
                // Concatenation makes a value as big as its parts; building it touches every element.
                steps = steps.saturating_add(size);
                (steps, Some(size.max(1)))
            } else {
                (steps, None)
            }
        }
        Expr::List(l) => {
            let mut steps: u64 = 1;
            for el in &l.elements {
                steps = steps.saturating_add(walk(el).0);
            }
            (steps, Some(l.elements.len() as u64))
        }
        Expr::Map(m) => {
            let steps = entries(&m.entries);
            (steps, Some(m.entries.len() as u64))
        }
        Expr::Struct(s) => (entries(&s.entries), Some(s.entries.len() as u64)),
        Expr::Comprehension(c) => {
            let (range_steps, n) = walk(&c.iter_range);
            let n = n.unwrap_or(UNKNOWN_SIZE);
            let body = walk(&c.loop_cond)
                .0
                .saturating_add(walk(&c.loop_step).0)
                .saturating_add(1);
            let steps = range_steps
                .saturating_add(walk(&c.accu_init).0)
                .saturating_add(n.saturating_mul(body))
                .saturating_add(walk(&c.result).0);
            (steps, Some(n.max(1)))
        }
    }
}

fn entries(entries: &[cel::common::ast::IdedEntryExpr]) -> u64 {
    let mut steps: u64 = 1;
    for e in entries {
        let c = match &e.expr {
            EntryExpr::StructField(f) => walk(&f.value).0,
            EntryExpr::MapEntry(m) => walk(&m.key).0.saturating_add(walk(&m.value).0),
        };
        steps = steps.saturating_add(c);
    }
    steps
}

/// The direct subexpressions of an expression, for walks that treat most kinds alike.
pub fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    fn entries(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&IdedExpr> {
        let mut v = Vec::new();
        for x in entries {
            match &x.expr {
                EntryExpr::StructField(f) => v.push(&f.value),
                EntryExpr::MapEntry(m) => {
                    v.push(&m.key);
                    v.push(&m.value);
                }
            }
        }
        v
    }
    let mut out = Vec::new();
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        Expr::Select(s) => out.push(&*s.operand),
        Expr::Call(c) => {
            out.extend(c.target.as_deref());
            out.extend(c.args.iter());
        }
        Expr::List(l) => out.extend(l.elements.iter()),
        Expr::Map(m) => out.extend(entries(&m.entries)),
        Expr::Struct(s) => out.extend(entries(&s.entries)),
        Expr::Comprehension(c) => out.extend([
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]),
    }
    out
}

/// The names that macros bind (`x` in `list.all(x, ...)`), which are not free variables.
pub fn bound_names(e: &IdedExpr, out: &mut std::collections::BTreeSet<String>) {
    if let Expr::Comprehension(c) = &e.expr {
        out.insert(c.iter_var.clone());
        out.extend(c.iter_var2.clone());
        out.insert(c.accu_var.clone());
    }
    for child in children(e) {
        bound_names(child, out);
    }
}

/// The bound on evaluation steps of a compiled expression.
pub fn steps(expr: &IdedExpr) -> u64 {
    walk(expr).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::Env;

    fn cost(src: &str) -> u64 {
        let p = Env::stdlib().compile(src).expect("compiles");
        steps(p.expression())
    }

    #[test]
    fn plain_conditions_are_cheap() {
        assert!(cost("finding.severity == 'critical' && x.downloads > 10") < 50);
    }

    #[test]
    fn nested_macros_multiply() {
        let list = format!(
            "[{}]",
            (0..100)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let small = "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]";
        let one = cost(&format!("{list}.all(x, x > 0)"));
        let two = cost(&format!("{small}.all(x, {small}.all(y, x + y > 0))"));
        let three = cost(&format!(
            "{list}.all(x, {list}.all(y, {list}.exists(z, x + y + z < 0)))"
        ));
        assert!(one < 1_000, "{one}");
        assert!(two > 4_000 && two < BUDGET, "{two}");
        assert!(three > BUDGET, "{three}");
    }
}
