// Orders tables parents-first from the foreign-key graph, cycles included.
// Pure: it never reads the database, so it can be tested on any graph.

export interface Edge {
  child: string;
  parent: string;
}

export interface Ordering {
  /** Every table, parents before children; the members of a cycle stay together. */
  order: string[];
  /** Each strongly connected component of more than one table, or a table referencing itself. */
  cycles: string[][];
}

/** Tarjan's strongly connected components, then a topological order of the condensation. */
export function orderTables(tables: string[], edges: Edge[]): Ordering {
  const nodes = [...new Set(tables)].sort();
  const known = new Set(nodes);
  const parentsOf = new Map<string, string[]>(nodes.map((n) => [n, []]));
  const selfLoops = new Set<string>();
  for (const { child, parent } of edges) {
    if (!known.has(child) || !known.has(parent)) continue;
    if (child === parent) selfLoops.add(child);
    else parentsOf.get(child)!.push(parent);
  }
  for (const list of parentsOf.values()) list.sort();

  // Tarjan emits each component after every component it can reach, i.e. after its parents:
  // the emission order is already parents-first. Iterative, so deep chains do not overflow.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let next = 0;
  for (const root of nodes) {
    if (index.has(root)) continue;
    const work: { node: string; i: number }[] = [{ node: root, i: 0 }];
    index.set(root, next);
    low.set(root, next++);
    stack.push(root);
    onStack.add(root);
    while (work.length) {
      const frame = work[work.length - 1];
      const parents = parentsOf.get(frame.node)!;
      if (frame.i < parents.length) {
        const p = parents[frame.i++];
        if (!index.has(p)) {
          index.set(p, next);
          low.set(p, next++);
          stack.push(p);
          onStack.add(p);
          work.push({ node: p, i: 0 });
        } else if (onStack.has(p)) {
          low.set(frame.node, Math.min(low.get(frame.node)!, index.get(p)!));
        }
        continue;
      }
      work.pop();
      if (work.length) {
        const caller = work[work.length - 1].node;
        low.set(caller, Math.min(low.get(caller)!, low.get(frame.node)!));
      }
      if (low.get(frame.node) === index.get(frame.node)) {
        const component: string[] = [];
        let member: string;
        do {
          member = stack.pop()!;
          onStack.delete(member);
          component.push(member);
        } while (member !== frame.node);
        components.push(component.sort());
      }
    }
  }
  return {
    order: components.flat(),
    cycles: components.filter((c) => c.length > 1 || selfLoops.has(c[0])),
  };
}
