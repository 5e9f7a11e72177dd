// The code editor (CodeMirror 6), loaded as a chunk of its own only when a worker's code is opened.
import { autocompletion, closeBrackets, closeBracketsKeymap, completionKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { javascript } from "@codemirror/lang-javascript";
import { bracketMatching, defaultHighlightStyle, indentOnInput, syntaxHighlighting } from "@codemirror/language";
import { lintGutter, setDiagnostics } from "@codemirror/lint";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { EditorState } from "@codemirror/state";
import {
  EditorView, drawSelection, highlightActiveLine, highlightActiveLineGutter, highlightSpecialChars, keymap, lineNumbers,
} from "@codemirror/view";

const theme = EditorView.theme({
  "&": { height: "100%", fontSize: "13px", backgroundColor: "var(--editor-bg)" },
  ".cm-scroller": { fontFamily: "var(--mono)", lineHeight: "1.55" },
  ".cm-content": { padding: "10px 0" },
  ".cm-gutters": { backgroundColor: "var(--editor-gutter)", color: "var(--faint)", border: "none", paddingLeft: "4px" },
  ".cm-activeLine": { backgroundColor: "var(--editor-active)" },
  ".cm-activeLineGutter": { backgroundColor: "var(--editor-active)", color: "var(--text)" },
  "&.cm-focused": { outline: "none" },
  ".cm-selectionBackground, &.cm-focused .cm-selectionBackground, ::selection": { backgroundColor: "var(--editor-selection) !important" },
  ".cm-tooltip": { border: "1px solid var(--line)", borderRadius: "8px", boxShadow: "var(--shadow)" },
  ".cm-lint-marker": { width: "0.9em", height: "0.9em" },
});

const isScript = (name) => /\.(m|c)?js$/i.test(name);

// Opens an editor in `parent` over several files; `onChange(name, text)` follows every edit.
// Each file keeps its own state (and undo history) while another is shown.
export function createEditor(parent, { files, active, onChange }) {
  let current = active;
  const states = new Map();
  const makeState = (name) => EditorState.create({
    doc: files[name] ?? "",
    extensions: [
      lineNumbers(),
      highlightActiveLineGutter(),
      highlightSpecialChars(),
      history(),
      drawSelection(),
      indentOnInput(),
      syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
      bracketMatching(),
      closeBrackets(),
      autocompletion(),
      highlightActiveLine(),
      highlightSelectionMatches(),
      lintGutter(),
      EditorState.tabSize.of(2),
      keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...searchKeymap, ...historyKeymap, ...completionKeymap, indentWithTab]),
      isScript(name) ? javascript() : [],
      theme,
      EditorView.contentAttributes.of({ "aria-label": `Source of ${name}` }),
      EditorView.updateListener.of((update) => {
        if (update.docChanged) onChange(current, update.state.doc.toString());
      }),
    ],
  });
  const view = new EditorView({ parent, state: makeState(current) });
  return {
    view,
    get file() { return current; },
    text(name = current) { return name === current ? view.state.doc.toString() : (states.get(name)?.doc.toString() ?? files[name]); },
    show(name) {
      if (name === current) return;
      states.set(current, view.state);
      current = name;
      view.setState(states.get(name) ?? makeState(name));
    },
    // Replaces every file's text (after a deploy or a revert), keeping the file shown.
    reset(newFiles) {
      files = newFiles;
      states.clear();
      view.setState(makeState(current));
    },
    showError(error) {
      const diagnostics = [];
      if (error && error.line > 0 && (!error.filename || error.filename === current)) {
        const doc = view.state.doc;
        const line = doc.line(Math.min(error.line, doc.lines));
        const from = Math.min(line.from + Math.max(0, (error.column || 1) - 1), line.to);
        diagnostics.push({ from, to: line.to, severity: "error", message: error.message });
      }
      view.dispatch(setDiagnostics(view.state, diagnostics));
    },
    focus() { view.focus(); },
    destroy() { view.destroy(); },
  };
}
