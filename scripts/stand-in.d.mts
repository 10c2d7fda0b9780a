/** The source of a stand-in module (CommonJS) for `names`, the exports of the module the expression `load` gives. */
export function standIn(load: string, names: readonly string[]): string;
