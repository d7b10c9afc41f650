// Starts GraphiQL from its plain script builds (React, ReactDOM, GraphiQL and the explorer
// plugin are globals; no bundler). The API writes the settings into the page as JSON
// (nexes/http/ide.py): the endpoint, the headers (a development token, or a placeholder
// for the user's own) and the saved example queries, one tab each.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("nexes-graphiql-config").textContent);
  var headers = JSON.stringify(config.headers, null, 2);
  var tabs = config.examples.map(function (example) {
    return { query: example.query, variables: example.variables, headers: headers };
  });
  // GraphiQL 3 fills the first tab's variables editor from the `variables` prop only, not
  // from defaultTabs: give it the first example's where no tabs are stored yet.
  var stored = false;
  try {
    stored = Boolean(window.localStorage.getItem("graphiql:tabState"));
  } catch (e) {
    stored = false; // storage refused (private mode): GraphiQL keeps tabs in memory
  }
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: GraphiQL.createFetcher({ url: config.url }),
      plugins: [GraphiQLPluginExplorer.explorerPlugin()],
      // `headers` (not only defaultHeaders): GraphiQL would otherwise start from the empty
      // headers it stores when shouldPersistHeaders is false, and lose the token on reload.
      headers: headers,
      defaultHeaders: headers,
      defaultTabs: tabs,
      variables: stored || !tabs.length ? undefined : tabs[0].variables,
      defaultEditorToolsVisibility: "headers",
      // A token typed into the headers pane stays in this tab only, never in localStorage.
      shouldPersistHeaders: false,
    })
  );
})();
