import assert from "node:assert/strict";
import { orderTables } from "../shared/restore/order.ts";

const before = (order: string[], a: string, b: string) => order.indexOf(a) < order.indexOf(b);

Deno.test("order puts parents before children along a chain and a diamond", () => {
  const { order, cycles } = orderTables(["d", "c", "b", "a"], [
    { child: "b", parent: "a" },
    { child: "c", parent: "a" },
    { child: "d", parent: "b" },
    { child: "d", parent: "c" },
  ]);
  assert.equal(order[0], "a");
  assert.equal(order[3], "d");
  assert.deepEqual(cycles, []);
});

Deno.test("order reports a self-reference and a two-table cycle, and keeps each cycle together", () => {
  const { order, cycles } = orderTables(["users", "teams", "members", "tenants"], [
    { child: "users", parent: "users" },
    { child: "users", parent: "tenants" },
    { child: "members", parent: "teams" },
    { child: "teams", parent: "members" },
    { child: "members", parent: "tenants" },
  ]);
  assert.deepEqual(cycles, [["members", "teams"], ["users"]]);
  assert.ok(before(order, "tenants", "users"));
  assert.ok(before(order, "tenants", "members"));
  assert.equal(Math.abs(order.indexOf("members") - order.indexOf("teams")), 1);
});

Deno.test("order ignores edges to tables outside the set and handles a long chain", () => {
  const n = 5000;
  const names = Array.from({ length: n }, (_, i) => `t${String(i).padStart(5, "0")}`);
  const edges = names.slice(1).map((child, i) => ({ child, parent: names[i] }));
  edges.push({ child: names[0], parent: "outside" });
  const { order, cycles } = orderTables([...names].reverse(), edges);
  assert.deepEqual(order, names);
  assert.deepEqual(cycles, []);
});
