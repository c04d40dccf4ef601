// The page of an import under way follows it in place: every second (as often as the import
// writes its progress) it fetches itself again and shows the new state and progress where the
// old ones were, instead of reloading (a page that reloads itself on a timer moves a reader's
// place under them: WCAG 2.2.1). Once the import is over (or the answer is another page: the
// session ended) it is loaded again whole, with the import's report. Without scripts the page
// says to reload it.
(() => {
  "use strict";
  const EVERY_MS = 1000;
  const page = document.getElementById("import-job");
  if (!page || page.dataset.running !== "yes") {
    return;
  }

  const show = (fresh) => {
    const state = document.getElementById("import-state");
    const freshState = fresh.getElementById("import-state").textContent;
    if (state.textContent !== freshState) {
      state.textContent = freshState; // in a status region: read out when it changes
    }
    document.getElementById("import-progress-block").replaceChildren(
      ...fresh.getElementById("import-progress-block").childNodes);
  };

  const follow = async () => {
    let response;
    try {
      response = await fetch(window.location.href, { cache: "no-store" });
    } catch (error) {
      window.setTimeout(follow, EVERY_MS); // the network, for a moment: ask again
      return;
    }
    if (response.status >= 500) {
      window.setTimeout(follow, EVERY_MS);
      return;
    }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const freshPage = fresh.getElementById("import-job");
    if (!response.ok || !freshPage || freshPage.dataset.running !== "yes") {
      window.location.reload();
      return;
    }
    show(fresh);
    window.setTimeout(follow, EVERY_MS);
  };

  window.setTimeout(follow, EVERY_MS);
})();
