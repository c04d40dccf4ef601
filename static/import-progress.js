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
    const block = document.getElementById("import-progress-block");
    const freshBlock = fresh.getElementById("import-progress-block");
    if (block.innerHTML !== freshBlock.innerHTML) { // nothing swapped for nothing
      block.replaceChildren(...freshBlock.childNodes);
    }
  };

  // The page as the server shows it now; null when there was none to be had (the network or
  // the server, for a moment: it is asked again), undefined for an answer that is an error.
  const fetchPage = async () => {
    try {
      const response = await fetch(window.location.href, { cache: "no-store" });
      if (response.status >= 500) {
        return null;
      }
      if (!response.ok) {
        return undefined;
      }
      return new DOMParser().parseFromString(await response.text(), "text/html");
    } catch (error) {
      return null;
    }
  };

  const follow = async () => {
    const fresh = await fetchPage();
    if (fresh !== null) {
      const freshPage = fresh && fresh.getElementById("import-job");
      if (!freshPage || freshPage.dataset.running !== "yes") {
        window.location.reload(); // over, or another page (the session ended): shown whole
        return;
      }
      show(fresh);
    }
    window.setTimeout(follow, EVERY_MS);
  };

  window.setTimeout(follow, EVERY_MS);
})();
